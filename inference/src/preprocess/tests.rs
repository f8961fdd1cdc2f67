use super::*;

fn plan(layout: Layout, dtype: InputType, resize: ResizeMode, color: ColorOrder) -> InputPlan {
    InputPlan {
        name: "x".into(),
        layout,
        dtype,
        size: Some((4, 4)),
        resize,
        color,
        scale: PixelScale::Unit,
        mean: [0.0; 3],
        std: [1.0; 3],
        pad_value: 114,
    }
}

/// A 4x2 image whose pixel (x, y) is (10x + y, 100 + x, 200 + y).
fn image() -> Vec<u8> {
    let mut v = Vec::new();
    for y in 0..2u8 {
        for x in 0..4u8 {
            v.extend_from_slice(&[10 * x + y, 100 + x, 200 + y]);
        }
    }
    v
}

#[test]
fn letterboxes_into_nchw_and_nhwc_alike() {
    let data = image();
    let img = ImageView::new(&data, 4, 2, 12).expect("view");
    let mut a = InputBuffers::default();
    let mut b = InputBuffers::default();
    plan(Layout::Nchw, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut a);
    plan(Layout::Nhwc, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut b);
    // Rows 0 and 3 are padding, rows 1-2 hold the image.
    for y in 0..4 {
        for x in 0..4 {
            for c in 0..3 {
                let nchw = a.u8[c * 16 + y * 4 + x];
                let nhwc = b.u8[(y * 4 + x) * 3 + c];
                assert_eq!(nchw, nhwc);
                let want = if y == 0 || y == 3 { 114 } else { data[((y - 1) * 4 + x) * 3 + c] };
                assert_eq!(nchw, want, "({x},{y}) channel {c}");
            }
        }
    }
}

#[test]
fn a_reused_buffer_is_repadded_when_the_geometry_changes() {
    let p = plan(Layout::Nchw, InputType::Uint8, ResizeMode::Letterbox, ColorOrder::Rgb);
    let mut buf = InputBuffers::default();
    // Landscape 4x2: rows 0 and 3 are padding.
    let wide = vec![7u8; 4 * 2 * 3];
    p.fill(&ImageView::new(&wide, 4, 2, 12).expect("view"), &mut buf);
    assert_eq!(&buf.u8[..4], &[114; 4]);
    // Same geometry again: still right (padding kept, image rewritten).
    let wide2 = vec![9u8; 4 * 2 * 3];
    p.fill(&ImageView::new(&wide2, 4, 2, 12).expect("view"), &mut buf);
    assert_eq!((&buf.u8[..4], buf.u8[4]), (&[114u8; 4][..], 9));
    // Portrait 2x4: columns 0 and 3 are padding, rows 0 and 3 are image now.
    let tall = vec![50u8; 2 * 4 * 3];
    p.fill(&ImageView::new(&tall, 2, 4, 6).expect("view"), &mut buf);
    for y in 0..4 {
        let row = &buf.u8[y * 4..y * 4 + 4];
        assert_eq!(row, &[114, 50, 50, 114], "row {y}");
    }
}

#[test]
fn swaps_to_bgr_and_normalises_with_mean_and_std() {
    let data = image();
    let img = ImageView::new(&data, 4, 2, 12).expect("view");
    let mut p = plan(Layout::Nchw, InputType::Float32, ResizeMode::Stretch, ColorOrder::Bgr);
    p.size = Some((4, 2));
    p.mean = [0.485, 0.456, 0.406];
    p.std = [0.229, 0.224, 0.225];
    let mut buf = InputBuffers::default();
    let g = p.fill(&img, &mut buf);
    assert!(matches!(g, Geometry::Identity { .. }));
    // Tensor channel 0 is blue (frame channel 2), normalised with the blue mean/std.
    let v = 200u8;
    let want = (v as f32 / 255.0 - 0.406) / 0.225;
    assert_eq!(buf.f32[0], want);
    let want_r = (0f32 / 255.0 - 0.485) / 0.229;
    assert_eq!(buf.f32[2 * 8], want_r);
}

#[test]
fn converts_to_float16() {
    let data = vec![255u8; 4 * 2 * 3];
    let img = ImageView::new(&data, 4, 2, 12).expect("view");
    let mut buf = InputBuffers::default();
    plan(Layout::Nchw, InputType::Float16, ResizeMode::Letterbox, ColorOrder::Rgb).fill(&img, &mut buf);
    assert_eq!(buf.f16.len(), 48);
    assert_eq!(buf.f16[4 + 1].to_f32(), 1.0);
    assert_eq!(buf.f16[0], half::f16::from_f32(114.0 / 255.0));
}

#[test]
fn maps_points_back_for_each_geometry() {
    let g = Geometry::Stretch { frame_w: 1000, frame_h: 500, in_w: 100, in_h: 100 };
    assert_eq!(g.to_frame(50.0, 50.0), (500.0, 250.0));
    assert_eq!(g.to_frame(200.0, -3.0), (1000.0, 0.0));
    let g = Geometry::Identity { frame_w: 10, frame_h: 10 };
    assert_eq!(g.normalised_to_frame(0.5, 1.2), (5.0, 10.0));
}

/// I420 planes of a smooth, colourful w x h picture (chroma from 2x2
/// means), BT.709 limited range like HD video.
fn i420_picture(w: usize, h: usize) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let rgb = |x: usize, y: usize| -> [f64; 3] {
        let (fx, fy) = (x as f64 / w as f64, y as f64 / h as f64);
        [255.0 * fx, 255.0 * (1.0 - fy), 127.0 + 100.0 * (6.0 * fx + 4.0 * fy).sin()]
    };
    let (kr, kb) = (0.2126, 0.0722);
    let yuv = |p: [f64; 3]| {
        let l = kr * p[0] + (1.0 - kr - kb) * p[1] + kb * p[2];
        let u = (p[2] - l) / (2.0 * (1.0 - kb));
        let v = (p[0] - l) / (2.0 * (1.0 - kr));
        [16.0 + l * 219.0 / 255.0, 128.0 + u * 224.0 / 255.0, 128.0 + v * 224.0 / 255.0]
    };
    let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
    let mut y_plane = vec![0u8; w * h];
    let (mut u_plane, mut v_plane) = (vec![0u8; cw * ch], vec![0u8; cw * ch]);
    for y in 0..h {
        for x in 0..w {
            y_plane[y * w + x] = yuv(rgb(x, y))[0].round() as u8;
        }
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut u, mut v) = (0.0, 0.0);
            for (dx, dy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                let p = yuv(rgb((2 * cx + dx).min(w - 1), (2 * cy + dy).min(h - 1)));
                u += p[1] / 4.0;
                v += p[2] / 4.0;
            }
            u_plane[cy * cw + cx] = u.round() as u8;
            v_plane[cy * cw + cx] = v.round() as u8;
        }
    }
    (y_plane, u_plane, v_plane)
}

/// Tightly packed I420 planes of a w x h frame, read as HD video is
/// (BT.709, limited range).
fn hd_view<'a>(y: &'a [u8], u: &'a [u8], v: &'a [u8], w: usize, h: usize) -> I420View<'a> {
    let cw = w.div_ceil(2);
    I420View::new((y, w), (u, cw), (v, cw), w as u32, h as u32, crate::YuvMatrix::Bt709, false).expect("view")
}

#[test]
fn yuv_conversion_hits_the_reference_colours() {
    let limited = YuvToRgb::new(crate::YuvMatrix::Bt601, false);
    let mut rgb = [0u8; 12];
    // Black, white, BT.601 red and blue (studio swing).
    limited.row::<0>(&[16, 235, 81, 41], &[128, 128, 90, 240], &[128, 128, 240, 110], &mut rgb);
    let want = [[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 0, 255]];
    for (got, want) in rgb.chunks(3).zip(want) {
        for c in 0..3 {
            assert!((i32::from(got[c]) - want[c]).abs() <= 2, "{got:?} vs {want:?}");
        }
    }
    let full = YuvToRgb::new(crate::YuvMatrix::Bt709, true);
    full.row::<0>(&[0, 255, 128], &[128, 128, 128], &[128, 128, 128], &mut rgb[..9]);
    assert_eq!(&rgb[..9], &[0, 0, 0, 255, 255, 255, 128, 128, 128]);
}

/// The AVX2 and the portable compilations of the per-pixel loops
/// (resizing, YUV to RGB, tensor writing) fill bit-identical tensors,
/// from I420 and RGB, at exact and arbitrary scales.
#[test]
fn vector_and_portable_loops_fill_identical_tensors() {
    let mut seed = 0x9e37_79b9_u32;
    let mut noise = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (seed >> 24) as u8
            })
            .collect()
    };
    for (w, h) in [(1280usize, 720usize), (640, 480), (641, 479), (1920, 1080), (333, 517)] {
        let rgb = noise(w * h * 3);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let (y, u, v) = (noise(w * h), noise(cw * ch), noise(cw * ch));
        let i420 = hd_view(&y, &u, &v, w, h);
        let packed = ImageView::new(&rgb, w as u32, h as u32, w * 3).expect("rgb");
        for (layout, dtype) in [(Layout::Nchw, InputType::Float32), (Layout::Nhwc, InputType::Uint8)] {
            let mut p = plan(layout, dtype, ResizeMode::Letterbox, ColorOrder::Rgb);
            p.size = Some((640, 640));
            let fill_both = |buf: &mut InputBuffers| {
                p.fill(&packed, buf);
                let from_rgb = (buf.f32.clone(), buf.u8.clone());
                p.fill_i420(&i420, buf);
                (from_rgb, (buf.f32.clone(), buf.u8.clone()))
            };
            let vector = fill_both(&mut InputBuffers::default());
            let portable = crate::simd::portable_only(|| fill_both(&mut InputBuffers::default()));
            let bits =
                |t: &(Vec<f32>, Vec<u8>)| (t.0.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), t.1.clone());
            assert!(bits(&vector.0) == bits(&portable.0), "{w}x{h} RGB, {layout:?}: the two loops differ");
            assert!(bits(&vector.1) == bits(&portable.1), "{w}x{h} I420, {layout:?}: the two loops differ");
        }
    }
}

/// Resizing the planes and then converting gives the tensor that
/// converting the whole frame and then resizing gives, within the
/// rounding of the two orders (3 levels at worst, under half a level on
/// average), for a letterbox and a stretch,
/// odd sizes included.
#[test]
fn i420_frames_fill_the_tensor_as_their_rgb_conversion_does() {
    for (w, h, resize, size) in [
        (1280usize, 720usize, ResizeMode::Letterbox, (640u32, 640u32)),
        (640, 480, ResizeMode::Letterbox, (640, 640)),
        (641, 479, ResizeMode::Letterbox, (320, 320)),
        (800, 600, ResizeMode::Stretch, (224, 224)),
    ] {
        let (y, u, v) = i420_picture(w, h);
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let view = hd_view(&y, &u, &v, w, h);
        // The whole frame converted to RGB, chroma upsampled bilinearly
        // first, as a colour converter hands it over.
        let conv = YuvToRgb::new(crate::YuvMatrix::Bt709, false);
        let upsample = |plane: &[u8]| {
            let mut full = vec![0u8; w * h];
            let src = Plane { data: plane, width: cw as u32, height: ch as u32, stride: cw };
            resize_plane_rows::<1>(&src, w, h, &mut ResizeScratch::default(), |row, px| {
                full[row * w..(row + 1) * w].copy_from_slice(px);
            });
            full
        };
        let (uf, vf) = (upsample(&u), upsample(&v));
        let mut rgb = vec![0u8; w * h * 3];
        for row in 0..h {
            let span = row * w..(row + 1) * w;
            conv.row::<0>(
                &y[span.clone()],
                &uf[span.clone()],
                &vf[span],
                &mut rgb[row * w * 3..(row + 1) * w * 3],
            );
        }
        // Packed (NHWC) and planar (NCHW, which I420 fills channel by
        // channel), in either colour order.
        for (layout, color) in [
            (Layout::Nhwc, ColorOrder::Rgb),
            (Layout::Nchw, ColorOrder::Rgb),
            (Layout::Nchw, ColorOrder::Bgr),
        ] {
            let mut p = plan(layout, InputType::Uint8, resize, color);
            p.size = Some(size);
            let (mut from_rgb, mut from_yuv) = (InputBuffers::default(), InputBuffers::default());
            let g1 = p.fill(&ImageView::new(&rgb, w as u32, h as u32, w * 3).expect("rgb"), &mut from_rgb);
            let g2 = p.fill_i420(&view, &mut from_yuv);
            assert_eq!(g1, g2);
            let what = format!("{w}x{h} {resize:?} {layout:?} {color:?}");
            let worst = from_rgb
                .u8
                .iter()
                .zip(&from_yuv.u8)
                .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                .max();
            assert!(worst.is_some_and(|d| d <= 3), "{what}: differs by up to {worst:?} levels");
            let mean =
                from_rgb.u8.iter().zip(&from_yuv.u8).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
                    / from_rgb.u8.len() as f64;
            assert!(mean < 0.5, "{what}: differs by {mean} levels on average");
        }
    }
}
