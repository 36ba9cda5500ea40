//! `ramp.png` of `voxd loadgen --ramp --report DIR`: four panels against concurrent
//! calls (frame-deviation percentiles with the SLO lines, gaps, engine CPU per
//! call-second, engine RSS), one line style per engine.
//!
//! Owns: the drawing (plotters' bitmap backend into memory), the PNG encoding of it
//! ([`encode_png`], deflate by `miniz_oxide`), and
//! the font: a TrueType file read at run time (`VOXD_PLOT_FONT`, else DejaVu Sans or
//! Liberation Sans from the usual Linux font folders; Debian's `fonts-dejavu-core`).
//! Without one the plot is drawn with no text and the caller is told.
//!
//! Must not: fail the ramp (errors are returned as sentences and reported as a
//! warning), or depend on system fontconfig.

use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;

use super::ramp::{EngineRamp, RampReport, StepResult};

/// Size of the whole picture, pixels.
const SIZE: (u32, u32) = (1400, 1000);
/// The font family name the panels ask for.
const FAMILY: &str = "sans-serif";
/// Where a font is looked for when `VOXD_PLOT_FONT` is not set.
const FONT_PATHS: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
];

/// Registers a font once per process; the path used, or `None` (no text).
fn font() -> Option<&'static str> {
    static FONT: OnceLock<Option<String>> = OnceLock::new();
    FONT.get_or_init(|| {
        let env = std::env::var("VOXD_PLOT_FONT").ok();
        let candidates: Vec<String> = match env {
            Some(p) => vec![p],
            None => FONT_PATHS.iter().map(|s| s.to_string()).collect(),
        };
        for p in candidates {
            let Ok(bytes) = std::fs::read(&p) else {
                continue;
            };
            // Registered fonts live for the process (plotters keeps `&'static`);
            // this happens once.
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font(FAMILY, FontStyle::Normal, bytes).is_ok() {
                return Some(p);
            }
        }
        None
    })
    .as_deref()
}

/// One line of a panel.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// Draws `report` into `path`. `Ok(Some(note))` when it was drawn without text (no
/// font found).
pub fn ramp_png(report: &RampReport, path: &Path) -> Result<Option<String>, String> {
    let text = font().is_some();
    let (w, h) = SIZE;
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, SIZE).into_drawing_area();
        draw(report, &root, text).map_err(|e| format!("drawing the plot: {e}"))?;
        root.present()
            .map_err(|e| format!("drawing the plot: {e}"))?;
    }
    write_png(path, &buf, w, h)?;
    Ok((!text).then(|| {
        "ramp.png has no text: no font found (install fonts-dejavu-core or set VOXD_PLOT_FONT)"
            .to_string()
    }))
}

fn write_png(path: &Path, rgb: &[u8], w: u32, h: u32) -> Result<(), String> {
    std::fs::write(path, encode_png(rgb, w, h))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// A PNG file of an 8-bit RGB image (`rgb` is `w * h * 3` bytes, rows top down):
/// signature, IHDR, one zlib-compressed IDAT of the scanlines (filter 0 each),
/// IEND.
pub fn encode_png(rgb: &[u8], w: u32, h: u32) -> Vec<u8> {
    let row = w as usize * 3;
    debug_assert_eq!(rgb.len(), row * h as usize);
    let mut raw = Vec::with_capacity((row + 1) * h as usize);
    for line in rgb.chunks_exact(row) {
        raw.push(0); // filter type: none
        raw.extend_from_slice(line);
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    // Bit depth 8, colour type 2 (RGB), deflate, filter method 0, no interlace.
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &miniz_oxide::deflate::compress_to_vec_zlib(&raw, 6),
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// One PNG chunk: length, type, data, CRC-32 of type and data.
fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    let len = u32::try_from(data.len()).expect("a PNG chunk is under 4 GiB");
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    let crc = crc32(crc32(0, kind), data);
    out.extend_from_slice(&crc.to_be_bytes());
}

/// CRC-32 (ISO-HDLC, the one PNG uses) of `data`, continuing from `crc`.
fn crc32(crc: u32, data: &[u8]) -> u32 {
    static TABLE: OnceLock<[u32; 256]> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (n, e) in t.iter_mut().enumerate() {
            let mut c = n as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        t
    });
    let mut c = !crc;
    for &b in data {
        c = table[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

type Area<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;
type DrawResult = Result<(), Box<dyn std::error::Error>>;

const P50: RGBColor = RGBColor(31, 119, 180);
const P99: RGBColor = RGBColor(255, 127, 14);
const P999: RGBColor = RGBColor(214, 39, 40);
const ENGINE: [RGBColor; 2] = [RGBColor(31, 119, 180), RGBColor(148, 103, 189)];
const SLO: RGBColor = RGBColor(120, 120, 120);

/// Steps with figures.
fn measured(e: &EngineRamp) -> impl Iterator<Item = &StepResult> {
    e.steps.iter().filter(|s| s.error.is_none())
}

/// log10 of a deviation in ms, floored at 1 us (the deviation panel's y).
fn log_ms(v: f64) -> f64 {
    v.max(0.001).log10()
}

fn draw(report: &RampReport, root: &Area<'_>, text: bool) -> DrawResult {
    root.fill(&WHITE)?;
    let root = if text {
        let title = format!(
            "voxd loadgen ramp: {} via {}, {} s per step; SLO {}",
            report.transport,
            report.via,
            report.seconds_per_step,
            report.slo.describe()
        );
        root.titled(&title, (FAMILY, 22))?
    } else {
        root.clone()
    };
    let panels = root.split_evenly((2, 2));
    let (x0, x1) = x_range(report);
    let many = report.engines.len() > 1;
    let name = |e: &EngineRamp, what: &str| {
        if many {
            format!("{} {what}", e.name)
        } else {
            what.to_string()
        }
    };

    // Deviation percentiles, log scale, with the SLO lines.
    let mut dev = Vec::new();
    for (i, e) in report.engines.iter().enumerate() {
        for (what, color, f) in [
            (
                "p50",
                P50,
                (|s: &StepResult| s.p50_dev_ms) as fn(&StepResult) -> f64,
            ),
            ("p99", P99, |s| s.p99_dev_ms),
            ("p99.9", P999, |s| s.p999_dev_ms),
        ] {
            dev.push(Line {
                label: name(e, what),
                color,
                dashed: i > 0,
                points: measured(e)
                    .map(|s| (s.calls as f64, log_ms(f(s))))
                    .collect(),
            });
        }
    }
    let slo = [
        (
            format!("SLO p99 {} ms", report.slo.p99_dev_us as f64 / 1e3),
            log_ms(report.slo.p99_dev_us as f64 / 1e3),
        ),
        (
            format!("SLO p99.9 {} ms", report.slo.p999_dev_us as f64 / 1e3),
            log_ms(report.slo.p999_dev_us as f64 / 1e3),
        ),
    ];
    let fmt_log = |y: &f64| {
        let v = 10f64.powf(*y);
        if v >= 1.0 {
            format!("{v:.0}")
        } else if v >= 0.1 {
            format!("{v:.1}")
        } else if v >= 0.01 {
            format!("{v:.2}")
        } else {
            format!("{v:.3}")
        }
    };
    panel(
        &panels[0],
        text,
        "frame inter-arrival deviation from 20 ms (ms, log scale)",
        "ms",
        (x0, x1),
        &dev,
        &slo,
        Some(&fmt_log),
    )?;

    let per_engine = |what: &str, f: &dyn Fn(&StepResult) -> Option<f64>| -> Vec<Line> {
        report
            .engines
            .iter()
            .enumerate()
            .map(|(i, e)| Line {
                label: name(e, what),
                color: ENGINE[i.min(1)],
                dashed: i > 0,
                points: measured(e)
                    .filter_map(|s| f(s).map(|v| (s.calls as f64, v)))
                    .collect(),
            })
            .collect()
    };
    panel(
        &panels[1],
        text,
        "gaps (agent audio stopped with audio queued)",
        "gaps",
        (x0, x1),
        &per_engine("gaps", &|s| Some(s.gaps as f64)),
        &[],
        None,
    )?;
    panel(
        &panels[2],
        text,
        "engine CPU per call-second (us)",
        "us",
        (x0, x1),
        &per_engine("cpu", &|s| s.cpu_us_per_call_second),
        &[],
        None,
    )?;
    panel(
        &panels[3],
        text,
        "engine RSS at the end of the step (MiB)",
        "MiB",
        (x0, x1),
        &per_engine("rss", &|s| s.rss_mib),
        &[],
        None,
    )?;
    Ok(())
}

/// The calls axis: every step, with half a step of room on both sides.
fn x_range(report: &RampReport) -> (f64, f64) {
    let calls: Vec<f64> = report
        .engines
        .iter()
        .flat_map(|e| e.steps.iter().map(|s| s.calls as f64))
        .collect();
    let lo = calls.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = calls.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let pad = (report.ramp.min_step() as f64 / 2.0).max(1.0);
    ((lo - pad).max(0.0), hi + pad)
}

/// An axis label for whole values only (calls, gaps), blank between them.
fn whole(v: &f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{v:.0}")
    } else {
        String::new()
    }
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &Area<'_>,
    text: bool,
    title: &str,
    y_desc: &str,
    (x0, x1): (f64, f64),
    lines: &[Line],
    hlines: &[(String, f64)],
    y_fmt: Option<&dyn Fn(&f64) -> String>,
) -> DrawResult {
    let ys = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .chain(hlines.iter().map(|h| h.1));
    let (mut y0, mut y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    if !y0.is_finite() {
        (y0, y1) = (0.0, 1.0);
    }
    if y_fmt.is_none() {
        // Linear panels start at zero.
        y0 = y0.min(0.0);
    }
    let span = (y1 - y0).max(1e-9);
    let (y0, y1) = if y_fmt.is_some() {
        (y0 - 0.1 * span - 0.1, y1 + 0.1 * span + 0.1)
    } else {
        (y0, y1 + 0.15 * span + if span < 1e-6 { 1.0 } else { 0.0 })
    };
    let mut b = ChartBuilder::on(area);
    b.margin(12);
    if text {
        b.caption(title, (FAMILY, 18))
            .x_label_area_size(40)
            .y_label_area_size(60);
    }
    let mut chart = b.build_cartesian_2d(x0..x1, y0..y1)?;
    {
        let mut mesh = chart.configure_mesh();
        if text {
            mesh.x_desc("concurrent calls")
                .y_desc(y_desc)
                .label_style((FAMILY, 14))
                .x_label_formatter(&whole);
            match y_fmt {
                Some(f) => mesh.y_label_formatter(f),
                None if y1 - y0 >= 10.0 => mesh.y_label_formatter(&whole),
                None => mesh.y_label_formatter(&|y| format!("{y:.2}")),
            };
        } else {
            mesh.x_labels(0).y_labels(0);
        }
        mesh.light_line_style(RGBColor(235, 235, 235));
        mesh.draw()?;
    }
    for (label, y) in hlines {
        let s = chart.draw_series(DashedLineSeries::new(
            [(x0, *y), (x1, *y)],
            8,
            6,
            SLO.stroke_width(2),
        ))?;
        if text {
            s.label(label.clone())
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], SLO.stroke_width(2)));
        }
    }
    for l in lines {
        if l.points.is_empty() {
            continue;
        }
        let style = l.color.stroke_width(2);
        let s = if l.dashed {
            chart.draw_series(DashedLineSeries::new(l.points.clone(), 10, 5, style))?
        } else {
            chart.draw_series(LineSeries::new(l.points.clone(), style))?
        };
        if text {
            let c = l.color;
            s.label(l.label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        let c = l.color;
        if l.dashed {
            chart.draw_series(
                l.points
                    .iter()
                    .map(move |&(x, y)| TriangleMarker::new((x, y), 6, c.filled())),
            )?;
        } else {
            chart.draw_series(
                l.points
                    .iter()
                    .map(move |&(x, y)| Circle::new((x, y), 4, c.filled())),
            )?;
        }
    }
    if text && (!lines.is_empty() || !hlines.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FAMILY, 13))
            .draw()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::ramp::{
        run_ramp, EngineSpec, EngineTarget, Machine, RampPlan, RampSpec, StepResult,
    };
    use crate::loadgen::stats::SloLimits;

    /// The scanlines of a PNG written by [`encode_png`] (one IDAT), filter bytes
    /// removed.
    fn decode(png: &[u8]) -> (u32, u32, Vec<u8>) {
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let mut at = 8;
        let (mut w, mut h, mut idat) = (0, 0, Vec::new());
        while at < png.len() {
            let len = u32::from_be_bytes(png[at..at + 4].try_into().unwrap()) as usize;
            let kind = &png[at + 4..at + 8];
            let data = &png[at + 8..at + 8 + len];
            let crc = u32::from_be_bytes(png[at + 8 + len..at + 12 + len].try_into().unwrap());
            assert_eq!(crc, crc32(crc32(0, kind), data), "CRC of {kind:?}");
            match kind {
                b"IHDR" => {
                    w = u32::from_be_bytes(data[0..4].try_into().unwrap());
                    h = u32::from_be_bytes(data[4..8].try_into().unwrap());
                    assert_eq!(&data[8..], &[8, 2, 0, 0, 0]);
                }
                b"IDAT" => idat.extend_from_slice(data),
                _ => {}
            }
            at += 12 + len;
        }
        let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&idat).expect("zlib data");
        let row = w as usize * 3;
        let mut rgb = Vec::new();
        for line in raw.chunks_exact(row + 1) {
            assert_eq!(line[0], 0, "filter none");
            rgb.extend_from_slice(&line[1..]);
        }
        assert_eq!(rgb.len(), row * h as usize);
        (w, h, rgb)
    }

    #[test]
    fn png_round_trips_and_crc_matches_the_standard_check_value() {
        // CRC-32/ISO-HDLC check value.
        assert_eq!(crc32(0, b"123456789"), 0xCBF4_3926);
        let (w, h) = (7u32, 5u32);
        let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 37 % 251) as u8).collect();
        assert_eq!(decode(&encode_png(&rgb, w, h)), (w, h, rgb));
    }

    fn report(passing_below: usize) -> RampReport {
        let plan = RampPlan {
            spec: RampSpec::parse("10:10:40").unwrap(),
            continue_after_fail: 1,
            limits: SloLimits::default(),
        };
        let engines = [EngineSpec {
            name: "voxd".into(),
            target: EngineTarget::Running {
                pid: None,
                pause: std::time::Duration::ZERO,
            },
        }];
        let ramps = run_ramp(
            &plan,
            &engines,
            |_, n| StepResult {
                error: None,
                slo_pass: n < passing_below,
                p50_dev_ms: 0.05,
                p99_dev_ms: n as f64 / 10.0,
                p999_dev_ms: n as f64 / 5.0,
                gaps: (n / 20) as u64,
                cpu_us_per_call_second: Some(300.0 + n as f64),
                rss_kib_per_call: Some(90.0),
                rss_mib: Some(20.0 + n as f64 * 0.09),
                intervals: 1_000,
                ..StepResult::failed(n, String::new())
            },
            |_| {},
        );
        RampReport {
            command_line: "voxd loadgen --ramp 10:10:40".into(),
            machine: Machine::detect(),
            transport: "rtp".into(),
            via: "direct".into(),
            agent: "sim".into(),
            seconds_per_step: 2.0,
            rate: 50.0,
            ramp: plan.spec.clone(),
            slo: plan.limits,
            engines: ramps,
        }
    }

    /// The plot is a valid PNG of [`SIZE`] with lines drawn on it, and, where a font
    /// is installed, the title band above the panels has dark (text) pixels.
    #[test]
    fn plot_is_a_valid_png_with_lines_and_text_when_a_font_exists() {
        let dir = std::env::temp_dir().join(format!("voxd-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ramp.png");
        let note = ramp_png(&report(30), &path).expect("plot drawn");
        let (w, h, rgb) = decode(&std::fs::read(&path).unwrap());
        assert_eq!((w, h), SIZE);
        let px = |x: usize, y: usize| {
            let i = (y * w as usize + x) * 3;
            (rgb[i], rgb[i + 1], rgb[i + 2])
        };
        // Some pixels have the p99 line's colour.
        let p99 = (P99.0, P99.1, P99.2);
        assert!((0..h as usize).any(|y| (0..w as usize).any(|x| px(x, y) == p99)));
        let dark_in_title = (0..24).any(|y| (0..w as usize).any(|x| px(x, y).0 < 80));
        match font() {
            Some(_) => {
                assert!(note.is_none(), "{note:?}");
                assert!(dark_in_title, "the title was not rendered");
            }
            None => {
                assert!(note.unwrap().contains("no font"));
                assert!(!dark_in_title);
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
