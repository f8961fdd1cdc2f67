//! Per-pixel loops compiled twice: for the baseline x86-64 every binary must
//! run on (SSE2: edge boxes such as Celeron J4125 have no AVX2) and for AVX2,
//! chosen at run time. The arithmetic is the same integer and IEEE float code
//! either way (Rust never fuses a multiply and an add on its own), so results
//! are bit-identical (tested); only the vector width changes. `vigil bench`,
//! YOLOv8n: preprocessing from I420 0.54 -> 0.30 ms at 1280x720, 0.48 -> 0.19
//! ms at 640x480, 1.10 -> 0.74 ms at 1920x1080; post-processing 0.15 -> 0.09
//! ms. That is all a whole binary built for x86-64-v3 gained.

/// Runs `$avx2` when this CPU has AVX2 and FMA, `$portable` otherwise. `$avx2`
/// must be a call to a `#[target_feature(enable = "avx2,fma")]` function that
/// does what `$portable` does. It returns from the enclosing function, so it
/// is meant to be that function's whole body.
macro_rules! dispatch {
    ($avx2:expr, $portable:expr) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if $crate::simd::has_avx2() {
                // SAFETY: the CPU was just found to have the features the
                // called function is compiled for.
                #[allow(unsafe_code)]
                return unsafe { $avx2 };
            }
        }
        $portable
    }};
}
pub(crate) use dispatch;

/// Whether this CPU has AVX2 and FMA (std caches the answer after the first
/// question).
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) fn has_avx2() -> bool {
    #[cfg(test)]
    if PORTABLE_ONLY.get() {
        return false;
    }
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(test)]
thread_local! {
    static PORTABLE_ONLY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with the portable loops on this thread, so tests can hold the
/// two compilations to the same results.
#[cfg(test)]
pub(crate) fn portable_only<R>(f: impl FnOnce() -> R) -> R {
    PORTABLE_ONLY.set(true);
    let out = f();
    PORTABLE_ONLY.set(false);
    out
}
