/*
 * Debian 12's civetweb 1.15 loads OpenSSL at run time by dlopen("libssl.so")
 * and looks up SSL_get_peer_certificate, which OpenSSL 3 only has as a macro
 * (for SSL_get1_peer_certificate): civetweb then calls a NULL pointer on the
 * first HTTPS request.  This tiny library has the SONAME "libssl.so", depends
 * on the real libssl.so.3 and provides the missing name; the shim links it,
 * so civetweb's dlopen finds it already loaded and dlsym sees the real
 * OpenSSL behind it.  Used by civetweb for client certificates only.
 */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate
X509 *SSL_get_peer_certificate(const SSL *ssl);

X509 *SSL_get_peer_certificate(const SSL *ssl)
{
    return SSL_get1_peer_certificate(ssl);
}
