/* Small runtime pieces the Swift side cannot express directly: a spin-wait hint for the worker pool. */
#ifndef TERN_RUNTIME_H
#define TERN_RUNTIME_H

static inline void tern_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
