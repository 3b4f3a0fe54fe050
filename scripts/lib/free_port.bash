# free_port: prints a loopback TCP port nothing listens on (sourced by the
# cluster scripts and the shell tests).
free_port() {
    local p
    for _ in $(seq 200); do
        p=$(( 20000 + RANDOM % 30000 ))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return 0; }
    done
    echo "no free port found" >&2
    return 1
}
