/* Small runtime pieces the Swift side cannot express directly: a spin-wait hint for the worker pool, and naming
   the calling thread (so tools and tests can tell Tern's threads apart; Glibc's module hides pthread_setname_np). */
#ifndef TERN_RUNTIME_H
#define TERN_RUNTIME_H

static inline void tern_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#if defined(__linux__)
#include <sys/prctl.h>
#endif

/* Names the calling thread (at most 15 bytes are kept on Linux). */
static inline void tern_set_thread_name(const char *name) {
#if defined(__linux__)
    prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
#else
    (void)name;
#endif
}

#endif
