//! Frontend benchmark: parse and resolve a 5,000-line Dockerfile for two platforms.
//!
//! Run with `cargo bench -p kiln-shared --bench frontend`. Prints the median and best of many
//! runs; the target (issue 2) is under 20 ms to resolve a 5,000-line Dockerfile.

use kiln_shared::frontend::resolve::{resolve, NoImages, Options};
use kiln_shared::frontend::{parse, print};
use kiln_shared::Platform;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// A Dockerfile in the style of real ones: global ARGs, many stages, long continued RUN lines,
/// ENV/LABEL pairs, COPY --from edges, heredocs, cache mounts.
fn big_dockerfile(lines: usize) -> String {
    let mut out = String::from("# syntax=docker/dockerfile:1\nARG BASE=debian:bookworm-slim\nARG VERSION=1.2.3\n");
    let mut stage: usize = 0;
    while out.lines().count() < lines {
        let prev = stage.checked_sub(1).map(|p| format!("s{p}"));
        out.push_str(&format!("FROM --platform=$BUILDPLATFORM ${{BASE}} AS s{stage}\nARG TARGETARCH VERSION\n"));
        out.push_str(&format!("ENV APP_HOME=/opt/app{stage} PATH=/opt/app{stage}/bin:$PATH LANG=C.UTF-8 V=${{VERSION:-dev}}\n"));
        out.push_str("LABEL org.opencontainers.image.title=\"app\" org.opencontainers.image.version=\"$VERSION\"\n");
        out.push_str("WORKDIR $APP_HOME/src\n");
        out.push_str("RUN --mount=type=cache,target=/var/cache/apt,sharing=locked \\\n    apt-get update \\\n    && apt-get install -y --no-install-recommends \\\n        ca-certificates curl git build-essential \\\n    # comment inside the continuation\n    && rm -rf /var/lib/apt/lists/*\n");
        out.push_str("COPY --chown=1000:1000 --chmod=0644 src/ include/ ./\n");
        if let Some(p) = &prev {
            out.push_str(&format!("COPY --from={p} /opt/ /opt/\n"));
        }
        out.push_str("RUN <<EOF\nset -eux\ncase \"$TARGETARCH\" in amd64) t=x86_64 ;; arm64) t=aarch64 ;; esac\nmake -j\"$(nproc)\" TARGET=$t\nEOF\n");
        out.push_str("EXPOSE 8080/tcp 9090\nUSER 1000:1000\nHEALTHCHECK --interval=30s CMD [\"/bin/true\"]\nCMD [\"app\", \"--serve\"]\n");
        stage += 1;
    }
    out
}

fn measure(runs: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[0])
}

fn main() {
    let text = big_dockerfile(5000);
    let lines = text.lines().count();
    let df = parse(&text).expect("benchmark Dockerfile parses");
    let host = Platform::host();
    let platforms = Platform::parse_list("linux/amd64,linux/arm64").expect("platforms");
    let resolve_all = |df: &kiln_shared::frontend::Dockerfile| {
        for p in &platforms {
            let opts = Options {
                platform: p.clone(),
                build_platform: host.clone(),
                build_args: &[],
                target: None,
                images: &NoImages,
                contexts: &[],
            };
            black_box(resolve(df, &opts).expect("resolves"));
        }
    };
    // Warm up, then measure.
    for _ in 0..5 {
        resolve_all(&parse(&text).expect("parses"));
    }
    let (parse_med, parse_min) = measure(50, || {
        black_box(parse(black_box(&text)).expect("parses"));
    });
    let (res_med, res_min) = measure(50, || resolve_all(&df));
    let (both_med, both_min) = measure(50, || resolve_all(&parse(black_box(&text)).expect("parses")));
    let (print_med, _) = measure(50, || {
        black_box(print::dockerfile(&df));
    });
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("frontend benchmark: {lines}-line Dockerfile, {} instructions, 2 platforms", df.instructions.len());
    println!("  parse                      median {:7.3} ms   best {:7.3} ms", ms(parse_med), ms(parse_min));
    println!("  resolve (2 platforms)      median {:7.3} ms   best {:7.3} ms", ms(res_med), ms(res_min));
    println!(
        "  parse + resolve (2 plat.)  median {:7.3} ms   best {:7.3} ms   target < 20 ms: {}",
        ms(both_med),
        ms(both_min),
        if ms(both_med) < 20.0 { "met" } else { "MISSED" }
    );
    println!("  print back                 median {:7.3} ms", ms(print_med));
}
