/// A borrowed packed RGB8 image. Rows start `stride` bytes apart, which may be
/// more than `width * 3` (GStreamer pads rows to 4 bytes).
#[derive(Debug, Clone, Copy)]
pub struct ImageView<'a> {
    pub data: &'a [u8],
    pub width: u32,
    pub height: u32,
    pub stride: usize,
}

impl<'a> ImageView<'a> {
    /// Checks that `data` holds `height` rows of `stride` bytes (the last row
    /// may stop at `width * 3`).
    pub fn new(data: &'a [u8], width: u32, height: u32, stride: usize) -> Option<ImageView<'a>> {
        let row = width as usize * 3;
        let need = if height == 0 { 0 } else { stride * (height as usize - 1) + row };
        (width > 0 && height > 0 && stride >= row && data.len() >= need).then_some(ImageView {
            data,
            width,
            height,
            stride,
        })
    }
}

/// The YUV -> RGB matrix of a video's colorimetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum YuvMatrix {
    Bt601,
    Bt709,
    Bt2020,
}

/// A borrowed 8-bit YUV 4:2:0 image in three planes (I420: Y at full size,
/// U and V at half width and height, rounded up), as video decoders produce
/// it. Preprocessing straight from it skips converting whole frames to RGB:
/// the planes are resized first and only the model's pixels are converted.
#[derive(Debug, Clone, Copy)]
pub struct I420View<'a> {
    pub y: &'a [u8],
    pub u: &'a [u8],
    pub v: &'a [u8],
    pub y_stride: usize,
    pub u_stride: usize,
    pub v_stride: usize,
    pub width: u32,
    pub height: u32,
    pub matrix: YuvMatrix,
    /// Luma 0-255 (JPEG) rather than 16-235 (video).
    pub full_range: bool,
}

impl<'a> I420View<'a> {
    /// Checks that each plane holds its rows.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        (y, y_stride): (&'a [u8], usize),
        (u, u_stride): (&'a [u8], usize),
        (v, v_stride): (&'a [u8], usize),
        width: u32,
        height: u32,
        matrix: YuvMatrix,
        full_range: bool,
    ) -> Option<I420View<'a>> {
        let fits = |data: &[u8], stride: usize, w: usize, h: usize| {
            w > 0 && h > 0 && stride >= w && data.len() >= stride * (h - 1) + w
        };
        let (w, h) = (width as usize, height as usize);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        (fits(y, y_stride, w, h) && fits(u, u_stride, cw, ch) && fits(v, v_stride, cw, ch))
            .then_some(I420View { y, u, v, y_stride, u_stride, v_stride, width, height, matrix, full_range })
    }
}

/// Fixed-point YUV -> RGB (16 fractional bits), for one matrix and range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct YuvToRgb {
    y_offset: i32,
    y_gain: i32,
    r_v: i32,
    g_u: i32,
    g_v: i32,
    b_u: i32,
}

impl YuvToRgb {
    pub(crate) fn new(matrix: YuvMatrix, full_range: bool) -> YuvToRgb {
        let (kr, kb) = match matrix {
            YuvMatrix::Bt601 => (0.299, 0.114),
            YuvMatrix::Bt709 => (0.2126, 0.0722),
            YuvMatrix::Bt2020 => (0.2627, 0.0593),
        };
        let kg = 1.0 - kr - kb;
        let (y_offset, y_gain, c_gain) =
            if full_range { (0, 1.0, 1.0) } else { (16, 255.0 / 219.0, 255.0 / 224.0) };
        let fixed = |v: f64| (v * 65536.0).round() as i32;
        YuvToRgb {
            y_offset,
            y_gain: fixed(y_gain),
            r_v: fixed(2.0 * (1.0 - kr) * c_gain),
            g_u: fixed(2.0 * (1.0 - kb) * kb / kg * c_gain),
            g_v: fixed(2.0 * (1.0 - kr) * kr / kg * c_gain),
            b_u: fixed(2.0 * (1.0 - kb) * c_gain),
        }
    }

    /// Converts rows of Y, U and V samples into packed RGB (the tests' whole-
    /// frame reference). With `CHROMA_SHIFT` = 1, `u` and `v` hold one sample
    /// per two pixels.
    #[cfg(test)]
    pub(crate) fn row<const CHROMA_SHIFT: usize>(&self, y: &[u8], u: &[u8], v: &[u8], rgb: &mut [u8]) {
        self.blocks::<CHROMA_SHIFT>(y, u, v, rgb.len() / 3, |start, r, g, b| {
            for (i, o) in rgb[start * 3..(start + r.len()) * 3].chunks_exact_mut(3).enumerate() {
                o[0] = r[i];
                o[1] = g[i];
                o[2] = b[i];
            }
        });
    }

    /// [`YuvToRgb::row`] into three planes, as an NCHW tensor wants them:
    /// no interleaving here and no de-interleaving after (`vigil bench`,
    /// YOLOv8n from I420: 0.67 -> 0.52 ms at 1280x720, 0.68 -> 0.47 ms at
    /// 640x480).
    pub(crate) fn planes<const CHROMA_SHIFT: usize>(
        &self,
        y: &[u8],
        u: &[u8],
        v: &[u8],
        out: [&mut [u8]; 3],
    ) {
        crate::simd::dispatch!(
            self.planes_avx2::<CHROMA_SHIFT>(y, u, v, out),
            self.planes_portable::<CHROMA_SHIFT>(y, u, v, out)
        )
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn planes_avx2<const CHROMA_SHIFT: usize>(&self, y: &[u8], u: &[u8], v: &[u8], out: [&mut [u8]; 3]) {
        self.planes_portable::<CHROMA_SHIFT>(y, u, v, out)
    }

    #[inline(always)]
    fn planes_portable<const CHROMA_SHIFT: usize>(
        &self,
        y: &[u8],
        u: &[u8],
        v: &[u8],
        [r_out, g_out, b_out]: [&mut [u8]; 3],
    ) {
        let n = r_out.len().min(g_out.len()).min(b_out.len());
        self.blocks::<CHROMA_SHIFT>(y, u, v, n, |start, r, g, b| {
            let span = start..start + r.len();
            r_out[span.clone()].copy_from_slice(r);
            g_out[span.clone()].copy_from_slice(g);
            b_out[span].copy_from_slice(b);
        });
    }

    /// The conversion, in blocks: the arithmetic runs over plain arrays,
    /// which the compiler vectorises, and `put(start, r, g, b)` takes each
    /// block's pixels (written per pixel into packed RGB, the three-byte
    /// stride kept it scalar: 2.6 ns a pixel). Converts at most `limit` pixels.
    #[inline(always)]
    fn blocks<const CHROMA_SHIFT: usize>(
        &self,
        y: &[u8],
        u: &[u8],
        v: &[u8],
        limit: usize,
        mut put: impl FnMut(usize, &[u8], &[u8], &[u8]),
    ) {
        const BLOCK: usize = 64;
        let n = y.len().min(u.len() << CHROMA_SHIFT).min(v.len() << CHROMA_SHIFT).min(limit);
        let (mut cr, mut cg, mut cb) = ([0i32; BLOCK], [0i32; BLOCK], [0i32; BLOCK]);
        let (mut r, mut g, mut b) = ([0u8; BLOCK], [0u8; BLOCK], [0u8; BLOCK]);
        let mut start = 0;
        while start < n {
            let len = BLOCK.min(n - start);
            // Chroma's share of each pixel, one sample per 1 << CHROMA_SHIFT pixels.
            let c0 = start >> CHROMA_SHIFT;
            let clen = (len + (1 << CHROMA_SHIFT) - 1) >> CHROMA_SHIFT;
            for (k, (&cu, &cv)) in u[c0..c0 + clen].iter().zip(&v[c0..c0 + clen]).enumerate() {
                let (cu, cv) = (i32::from(cu) - 128, i32::from(cv) - 128);
                let (dr, dg, db) = (self.r_v * cv, -self.g_u * cu - self.g_v * cv, self.b_u * cu);
                for j in (k << CHROMA_SHIFT)..((k + 1) << CHROMA_SHIFT).min(BLOCK) {
                    cr[j] = dr;
                    cg[j] = dg;
                    cb[j] = db;
                }
            }
            for (i, &l) in y[start..start + len].iter().enumerate() {
                let l = (i32::from(l) - self.y_offset) * self.y_gain + 32768;
                r[i] = ((l + cr[i]) >> 16).clamp(0, 255) as u8;
                g[i] = ((l + cg[i]) >> 16).clamp(0, 255) as u8;
                b[i] = ((l + cb[i]) >> 16).clamp(0, 255) as u8;
            }
            put(start, &r[..len], &g[..len], &b[..len]);
            start += len;
        }
    }
}
