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

    #[inline]
    pub(crate) fn row(&self, y: usize) -> &'a [u8] {
        let start = y * self.stride;
        &self.data[start..start + self.width as usize * 3]
    }
}
