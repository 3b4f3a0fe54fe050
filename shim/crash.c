/*
 * A fatal signal (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT) leaves its
 * backtrace on stderr before the process dies of it, as JSON lines:
 *
 *   {"level":"fatal","msg":"signal 11","frames":12}
 *   {"level":"fatal","frame":0,"object":"/usr/lib/x86_64-linux-gnu/libc.so.6","offset":"0x167132"}
 *
 * An object and an offset are what addr2line -e OBJECT OFFSET needs, also
 * for static functions and a stripped build.  The handler uses write(2) and
 * its own formatting only; backtrace() is called once at start so that it
 * does not load libgcc in the handler.  Under AddressSanitizer (make
 * test-asan) this handler answers a SIGSEGV instead of ASan's; memory errors
 * are still ASan's own reports.
 */
#include "shim.h"

#include <dlfcn.h>
#include <execinfo.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#define CRASH_FRAMES_MAX 48

static const int fatal_signals[] = { SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT };

/* Appends s to buf at *len, never past cap; escaped as inside a JSON string. */
static void put_chars(char *buf, size_t *len, size_t cap, const char *s, bool escaped)
{
    for (; *s && *len + 1 < cap; s++) {
        char c = escaped && (unsigned char) *s < 0x20 ? '?' : *s;
        if (escaped && (c == '"' || c == '\\')) {
            if (*len + 2 >= cap)
                break;
            buf[(*len)++] = '\\';
        }
        buf[(*len)++] = c;
    }
}

static void put_text(char *buf, size_t *len, size_t cap, const char *s)
{
    put_chars(buf, len, cap, s, false);
}

static void put_number(char *buf, size_t *len, size_t cap, unsigned long v, unsigned base)
{
    char digits[24];
    int n = 0;
    do {
        digits[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v && n < (int) sizeof(digits));
    if (base == 16)
        put_text(buf, len, cap, "0x");
    while (n > 0 && *len + 1 < cap)
        buf[(*len)++] = digits[--n];
}

static void put_line(char *buf, size_t len)
{
    buf[len++] = '\n';
    if (write(STDERR_FILENO, buf, len) < 0) {
        /* nowhere left to report it */
    }
}

static void on_fatal_signal(int sig)
{
    void *frames[CRASH_FRAMES_MAX];
    int n = backtrace(frames, CRASH_FRAMES_MAX);
    char line[512];
    size_t len = 0;

    put_text(line, &len, sizeof(line) - 1, "{\"level\":\"fatal\",\"msg\":\"signal ");
    put_number(line, &len, sizeof(line) - 1, (unsigned long) sig, 10);
    put_text(line, &len, sizeof(line) - 1, "\",\"frames\":");
    put_number(line, &len, sizeof(line) - 1, (unsigned long) n, 10);
    put_text(line, &len, sizeof(line) - 1, "}");
    put_line(line, len);
    for (int i = 0; i < n; i++) {
        Dl_info info = { 0 };
        bool known = dladdr(frames[i], &info) && info.dli_fname;
        len = 0;
        put_text(line, &len, sizeof(line) - 1, "{\"level\":\"fatal\",\"frame\":");
        put_number(line, &len, sizeof(line) - 1, (unsigned long) i, 10);
        put_text(line, &len, sizeof(line) - 1, ",\"object\":\"");
        put_chars(line, &len, sizeof(line) - 1, known ? info.dli_fname : "?", true);
        put_text(line, &len, sizeof(line) - 1, "\",\"offset\":\"");
        put_number(line, &len, sizeof(line) - 1,
                   (unsigned long) ((uintptr_t) frames[i] - (known ? (uintptr_t) info.dli_fbase : 0)), 16);
        put_text(line, &len, sizeof(line) - 1, "\"}");
        put_line(line, len);
    }
    /* SA_RESETHAND restored the default action: die of the same signal */
    raise(sig);
}

void crash_report_install(void)
{
    void *warm[1];
    (void) backtrace(warm, 1);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_fatal_signal;
    sa.sa_flags = SA_RESETHAND | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof(fatal_signals) / sizeof(fatal_signals[0]); i++)
        sigaction(fatal_signals[i], &sa, NULL);
}
