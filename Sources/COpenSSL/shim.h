/* OpenSSL headers for the server's TLS transport. */
#include <openssl/ssl.h>
#include <openssl/err.h>
