/* libkmon_openssl_compat.so: lets Debian 12's civetweb 1.15 speak TLS.
 *
 * civetweb loads libssl.so at run time and looks up SSL_get_peer_certificate, which
 * OpenSSL 3 turned into a macro for SSL_get1_peer_certificate; the lookup fails and
 * HTTPS is off. This library carries that one symbol under the SONAME libssl.so: once
 * kmon has loaded it, glibc's dlopen("libssl.so") hands civetweb this library, whose
 * dependency on the real libssl supplies every other symbol. */
#include <openssl/ssl.h>

#undef SSL_get_peer_certificate
X509 *SSL_get_peer_certificate(const SSL *s);
X509 *SSL_get_peer_certificate(const SSL *s) { return SSL_get1_peer_certificate(s); }
