/* zlib for gzip-compressed responses. */
#include <zlib.h>
