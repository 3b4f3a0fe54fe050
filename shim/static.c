/*
 * Static web assets from cfg.web_root: content types, ETag/304,
 * Cache-Control (immutable under /assets/, revalidate elsewhere), gzip from a
 * pre-built .gz sibling or compressed on the fly, no listing, no traversal.
 */
#include "shim.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define GZIP_ON_THE_FLY_MAX (512 * 1024)

static char root_real[PATH_MAX];

int static_init(void)
{
    const char *candidates[] = { cfg.web_root, "web/dist", "web" };
    for (size_t i = 0; i < 3; i++) {
        struct stat st;
        if (!candidates[i][0])
            continue;
        if (realpath(candidates[i], root_real) && stat(root_real, &st) == 0 && S_ISDIR(st.st_mode))
            return 0;
        if (i == 0) {
            log_error(NULL, "static: web_root %s is not a directory", cfg.web_root);
            return -1;
        }
    }
    root_real[0] = '\0';
    return 0;
}

static const struct {
    const char *ext, *type;
    bool text;
} types[] = {
    { "html", "text/html; charset=utf-8", true },
    { "css", "text/css; charset=utf-8", true },
    { "js", "text/javascript; charset=utf-8", true },
    { "mjs", "text/javascript; charset=utf-8", true },
    { "json", "application/json", true },
    { "map", "application/json", true },
    { "webmanifest", "application/manifest+json", true },
    { "svg", "image/svg+xml", true },
    { "txt", "text/plain; charset=utf-8", true },
    { "xml", "application/xml", true },
    { "png", "image/png", false },
    { "jpg", "image/jpeg", false },
    { "jpeg", "image/jpeg", false },
    { "gif", "image/gif", false },
    { "webp", "image/webp", false },
    { "ico", "image/x-icon", false },
    { "woff2", "font/woff2", false },
    { "woff", "font/woff", false },
    { "wasm", "application/wasm", false },
};

static int type_of(const char *path)
{
    const char *dot = strrchr(path, '.');
    const char *slash = strrchr(path, '/');
    if (!dot || (slash && dot < slash))
        return -1;
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        if (strcasecmp(dot + 1, types[i].ext) == 0)
            return (int) i;
    return -1;
}

/* Refuses "..", ".", hidden segments, backslashes, NUL and empty segments. */
static bool path_safe(const char *p)
{
    if (p[0] != '/')
        return false;
    for (const char *s = p; *s; s++)
        if (*s == '\\' || (unsigned char) *s < 0x20)
            return false;
    for (const char *s = p; *s;) {
        s++; /* past '/' */
        if (*s == '.')
            return false; /* ".", "..", ".git", ".env" */
        if (*s == '/')
            return false;
        s += strcspn(s, "/");
    }
    return true;
}

static void not_found(struct reply *r)
{
    reply_error(r, 404, "not_found", "no such resource", NULL, NULL);
}

/* Resolves a request path to a regular file inside the root, following the
   page conventions: "/" and directories -> index.html, "/x" -> x.html. */
static bool resolve(const char *path, char *out, struct stat *st)
{
    char candidate[PATH_MAX];
    const char *suffixes[] = { "", "/index.html", ".html" };
    for (size_t i = 0; i < 3; i++) {
        int n = snprintf(candidate, sizeof(candidate), "%s%s%s", root_real, path, suffixes[i]);
        if (n < 0 || (size_t) n >= sizeof(candidate))
            return false;
        /* realpath defeats symlinks that lead outside the root */
        if (!realpath(candidate, out))
            continue;
        size_t rl = strlen(root_real);
        if (strncmp(out, root_real, rl) != 0 || (out[rl] != '/' && out[rl] != '\0'))
            return false;
        if (stat(out, st) == 0 && S_ISREG(st->st_mode))
            return true;
    }
    return false;
}

static bool accepts_gzip(struct mg_connection *conn)
{
    const char *ae = mg_get_header(conn, "Accept-Encoding");
    return ae && strstr(ae, "gzip") && !strstr(ae, "gzip;q=0");
}

static char *read_file(const char *path, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    char *buf = malloc(size ? size : 1);
    size_t got = 0;
    while (buf && got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n <= 0) {
            free(buf);
            buf = NULL;
            break;
        }
        got += (size_t) n;
    }
    close(fd);
    return buf;
}

static char *gzip_buffer(const char *in, size_t len, size_t *out_len)
{
    z_stream zs = { 0 };
    if (deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return NULL;
    size_t cap = deflateBound(&zs, (uLong) len);
    char *out = malloc(cap);
    if (!out) {
        deflateEnd(&zs);
        return NULL;
    }
    zs.next_in = (Bytef *) (uintptr_t) in;
    zs.avail_in = (uInt) len;
    zs.next_out = (Bytef *) out;
    zs.avail_out = (uInt) cap;
    if (deflate(&zs, Z_FINISH) != Z_STREAM_END) {
        deflateEnd(&zs);
        free(out);
        return NULL;
    }
    *out_len = zs.total_out;
    deflateEnd(&zs);
    return out;
}

static void stream_file(struct mg_connection *conn, const char *path, size_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return;
    char buf[16384];
    size_t sent = 0;
    while (sent < size) {
        ssize_t n = read(fd, buf, sizeof(buf));
        if (n <= 0 || mg_write(conn, buf, (size_t) n) <= 0)
            break;
        sent += (size_t) n;
    }
    close(fd);
}

void static_serve(struct mg_connection *conn, struct reply *r, const char *path)
{
    char file[PATH_MAX];
    struct stat st;
    if (!root_real[0] || !path_safe(path) || strlen(path) > 1024 || !resolve(path, file, &st)) {
        not_found(r);
        return;
    }
    int t = type_of(file);
    const char *type = t >= 0 ? types[t].type : "application/octet-stream";
    bool page = t == 0;
    bool text = t >= 0 && types[t].text;

    /* a pre-built .gz sibling wins over compressing here */
    char gz[PATH_MAX];
    struct stat gst;
    bool gzip = false, gz_file = false;
    if (accepts_gzip(conn)) {
        if (snprintf(gz, sizeof(gz), "%s.gz", file) < (int) sizeof(gz) && stat(gz, &gst) == 0 && S_ISREG(gst.st_mode))
            gzip = gz_file = true;
        else if (text && st.st_size > 256 && st.st_size <= GZIP_ON_THE_FLY_MAX)
            gzip = true;
    }

    char etag[64], headers[512];
    snprintf(etag, sizeof(etag), "\"%lx-%lx%s\"", (unsigned long) st.st_size, (unsigned long) st.st_mtime,
             gzip ? "-gz" : "");
    bool immutable = strncmp(path, "/assets/", 8) == 0;
    snprintf(headers, sizeof(headers), "ETag: %s\r\nCache-Control: %s\r\nVary: Accept-Encoding\r\n%s", etag,
             immutable ? "public, max-age=31536000, immutable" : "no-cache", gzip ? "Content-Encoding: gzip\r\n" : "");

    const char *inm = mg_get_header(conn, "If-None-Match");
    if (inm && (strstr(inm, etag) || strcmp(inm, "*") == 0)) {
        reply_send(r, 304, NULL, headers, NULL, 0, page);
        return;
    }
    if (gz_file) {
        reply_send(r, 200, type, headers, NULL, (size_t) gst.st_size, page);
        if (!r->head)
            stream_file(conn, gz, (size_t) gst.st_size);
        r->bytes = r->head ? 0 : (size_t) gst.st_size;
        return;
    }
    if (gzip) {
        char *raw = read_file(file, (size_t) st.st_size);
        size_t zlen = 0;
        char *z = raw ? gzip_buffer(raw, (size_t) st.st_size, &zlen) : NULL;
        free(raw);
        if (z) {
            reply_send(r, 200, type, headers, z, zlen, page);
            free(z);
            return;
        }
        /* fall back to identity */
        snprintf(etag, sizeof(etag), "\"%lx-%lx\"", (unsigned long) st.st_size, (unsigned long) st.st_mtime);
        snprintf(headers, sizeof(headers), "ETag: %s\r\nCache-Control: %s\r\nVary: Accept-Encoding\r\n", etag,
                 immutable ? "public, max-age=31536000, immutable" : "no-cache");
    }
    reply_send(r, 200, type, headers, NULL, (size_t) st.st_size, page);
    if (!r->head)
        stream_file(conn, file, (size_t) st.st_size);
    r->bytes = r->head ? 0 : (size_t) st.st_size;
}
