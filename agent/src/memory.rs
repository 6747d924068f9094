//! Memory the process no longer uses goes back to the system.

/// Return the allocator's free memory to the system. A model load leaves megabytes of
/// freed metadata (a GGUF's vocabulary and merges are parsed into many small strings,
/// dropped once the tokenizer and the weights are built) inside the heap, where they would
/// stay resident and add to every later peak (the KV cache of a long prompt comes on top).
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim takes no pointers and only releases pages glibc's allocator
    // holds free; it is safe to call at any time, from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}
