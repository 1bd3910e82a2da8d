#!/usr/bin/env bash
# Check the torch-free runtime on aarch64 (Jetson's CPU architecture) under qemu-user.
#
#   scripts/aarch64_check.sh [WORK]        (default WORK: /tmp/feather-aarch64)
#
# 1. an arm64 Debian userland (python3 + its shared libraries) from this host's Debian mirror, with a
#    private apt configuration in WORK/apt (the system's apt state is not touched);
# 2. the runtime's dependencies as arm64 wheels from PyPI (pip on the host with --platform,
#    nothing runs pip under emulation, versions pinned to the host .venv's) and a wheel of
#    this working tree (feather-vlm, pure Python);
#    onnx + ml_dtypes + protobuf + typing_extensions (the quantization report's extra needs,
#    also pinned to the host's) go to a separate folder, used only by step 5;
# 3. on the host: the tiny checkpoint, its fp32 export, one capture of the float chain
#    (WORK/capture.pkl, 2 prompts x 4 tokens) and the int8 / int4 / int8-int4 quantizations
#    calibrated on it, each with its accuracy report on x86;
# 4. the same greedy generation on x86 (.venv) and on aarch64 (qemu) for fp32 / int8 / int4,
#    then a comparison: fp32 must match (tokens, kept indices, logits within 1e-3); int8 / int4
#    must stay within the quantization's own error on x86 (see scripts/aarch64_compare.py);
# 5. the quantization report (tests/calibration/cpu_report.py: per graph, relative error vs
#    fp32 and kernel error vs the exact integer reference) for each method on aarch64 from the
#    same capture: it must be ok with the same bounds as on x86, nothing relaxed.
#
# Everything lives in WORK (never inside the repository); a re-run reuses the userland, the
# wheels, and the checkpoint, capture and exports while the project's sources are unchanged
# (the wheel of the working tree is rebuilt every run). It deletes only what it created itself.
#
# Environment: PYTHON (host interpreter with the export extra; default REPO/.venv/bin/python),
# QEMU_AARCH64 (default qemu-aarch64), AARCH64_CPU (qemu CPU model, default cortex-a76: ARMv8.2
# with dot product, no SVE / SME, like Jetson Orin's Cortex-A78AE; `qemu-aarch64 -cpu help`),
# DEBIAN_SUITE (default bookworm), DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR (default: the URIs
# this host's apt sources give for SUITE and SUITE-security),
# TOKENS (default 8).
set -euo pipefail

case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
die() { echo "aarch64_check: FAIL: $*" >&2; exit 1; }
say() { echo "== $*"; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
HELPER=$REPO/scripts/aarch64_compare.py
PY=${PYTHON:-$REPO/.venv/bin/python}
QEMU=${QEMU_AARCH64:-qemu-aarch64}
CPU=${AARCH64_CPU:-cortex-a76}
SUITE=${DEBIAN_SUITE:-bookworm}
apt_uri() {  # the first URI this host's apt sources (deb822 or one-line) give for suite $1
    python3 - "$1" <<'PYEOF'
import glob, sys
suite = sys.argv[1]
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path, encoding="utf-8", errors="replace").read().split("\n\n"):
        fields = dict(l.split(":", 1) for l in stanza.splitlines() if ":" in l and not l.startswith(("#", " ")))
        if "deb" in fields.get("Types", "").split() and suite in fields.get("Suites", "").split():
            print(fields["URIs"].split()[0]); sys.exit(0)
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path, encoding="utf-8", errors="replace").read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = [w for w in line.split() if not w.startswith("[")] if "]" not in line else \
            line.split("]", 1)[0].split()[:1] + line.split("]", 1)[1].split()
        if len(words) >= 3 and words[0] == "deb" and words[2] == suite:
            print(words[1]); sys.exit(0)
sys.exit(1)
PYEOF
}
MIRROR=${DEBIAN_MIRROR:-$(apt_uri "$SUITE" || true)}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security" || true)}
[ -n "$MIRROR" ] || die "this host's apt sources name no mirror for Debian $SUITE; set DEBIAN_MIRROR"
KEYRING=${DEBIAN_KEYRING:-/usr/share/keyrings/debian-archive-keyring.gpg}
TOKENS=${TOKENS:-8}
MARKER=.feather-aarch64-check

# -- preflight -----------------------------------------------------------------------------
[ -x "$PY" ] || die "no host Python at $PY (set PYTHON=...)"
command -v "$QEMU" >/dev/null || die "$QEMU not found (apt-get install qemu-user)"
command -v apt-get >/dev/null && command -v dpkg >/dev/null || die "apt-get and dpkg are needed (Debian / Ubuntu host)"
[ -r "$KEYRING" ] || die "no Debian archive keyring at $KEYRING (apt-get install debian-archive-keyring)"
"$PY" -c "import torch, transformers, onnx" 2>/dev/null || die "$PY lacks the export extra (torch, transformers, onnx)"

WORK=$(realpath -m "${1:-/tmp/feather-aarch64}")
case "$WORK/" in "$REPO"/*) die "WORK ($WORK) is inside the repository; pick a folder outside it" ;; esac
mkdir -p "$WORK"
if [ ! -e "$WORK/$MARKER" ]; then
    [ -z "$(ls -A "$WORK")" ] || die "$WORK is not empty and was not made by this script; pick another folder"
    echo "made by scripts/aarch64_check.sh (feather-vlm); safe to delete" > "$WORK/$MARKER"
fi
RES=$WORK/results
mkdir -p "$RES"
rm -f "$RES"/times.tsv "$RES"/compare-*.json "$RES"/x86-*.npz "$RES"/arm-*.npz "$RES"/report-arm-* "$RES"/reports.*

now() { date +%s.%N; }
T_ALL=$(now)
T_PART=$T_ALL
part_done() {  # name: record the time since the last call
    local t; t=$(now)
    awk -v a="$T_PART" -v b="$t" -v n="$1" 'BEGIN { printf "%s\t%.2f\n", n, b - a }' >> "$RES/times.tsv"
    T_PART=$t
}
echo "repo $REPO"
echo "work $WORK"
echo "qemu $("$QEMU" --version | head -1), cpu model $CPU"

# -- 1. arm64 userland ----------------------------------------------------------------------
APTDIR=$WORK/apt
APT=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o "Dir::Etc::SourceParts=$APTDIR/sources.list.d"
     -o "Dir::Etc::Preferences=$APTDIR/preferences" -o "Dir::Etc::PreferencesParts=$APTDIR/preferences.d"
     -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::State::status=$APTDIR/status" -o "Dir::Cache=$APTDIR/cache"
     -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64" -o "Debug::NoLocking=1")
[ "$(id -u)" = 0 ] && APT+=(-o "APT::Sandbox::User=root")
ROOT=$WORK/root-$SUITE
if [ -e "$ROOT/.complete" ]; then
    say "arm64 userland: reusing $ROOT ($(head -1 "$ROOT/.complete"))"
else
    say "arm64 userland: Debian $SUITE from $MIRROR -> $ROOT"
    mkdir -p "$APTDIR"/{lists/partial,cache/archives/partial,sources.list.d,preferences.d} "$WORK/debs-$SUITE"
    : > "$APTDIR/status"
    {
        echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE main"
        echo "deb [arch=arm64 signed-by=$KEYRING] $MIRROR $SUITE-updates main"
        [ -z "$SECURITY_MIRROR" ] || echo "deb [arch=arm64 signed-by=$KEYRING] $SECURITY_MIRROR $SUITE-security main"
    } > "$APTDIR/sources.list"
    apt-get "${APT[@]}" -q update > "$WORK/apt-update.log" 2>&1 || { tail -5 "$WORK/apt-update.log" >&2; die "apt-get update failed (log: $WORK/apt-update.log)"; }
    PYV=$(apt-cache "${APT[@]}" depends python3 | grep -oE 'python3\.[0-9]+' | head -1)
    [ -n "$PYV" ] || die "could not tell which python3.N Debian $SUITE ships"
    # The interpreter's packages plus every library they need (Depends / PreDepends, recursively):
    # libraries only, so dpkg, perl and friends stay out.
    keep='^(lib[a-z0-9.+-]+|zlib1g|gcc-[0-9]+-base|'"${PYV//./\\.}"'(-minimal)?|lib'"${PYV//./\\.}"'-(minimal|stdlib))$'
    want=("$PYV" "$PYV-minimal" "lib$PYV-minimal" "lib$PYV-stdlib" libstdc++6 libgcc-s1)
    declare -A seen=()
    while [ "${#want[@]}" -gt 0 ]; do
        next=()
        for p in "${want[@]}"; do seen[$p]=1; done
        while read -r dep; do
            if [ -n "$dep" ] && [ -z "${seen[$dep]:-}" ] && [[ $dep =~ $keep ]]; then
                seen[$dep]=1
                next+=("$dep")
            fi
        done < <(apt-cache "${APT[@]}" depends --no-recommends --no-suggests --no-conflicts --no-breaks \
                    --no-replaces --no-enhances "${want[@]}" | sed -nE 's/^ *\|?(Pre)?Depends: ([^ <>]+).*/\2/p' | sed 's/:arm64$//' | sort -u)
        want=("${next[@]}")
    done
    pkgs=$(printf '%s\n' "${!seen[@]}" | sort)
    echo "   $(echo "$pkgs" | wc -l) packages: $(echo $pkgs)"
    (cd "$WORK/debs-$SUITE" && apt-get "${APT[@]}" -q download $pkgs > "$WORK/apt-download.log" 2>&1) \
        || { tail -5 "$WORK/apt-download.log" >&2; die "apt-get download failed (log: $WORK/apt-download.log)"; }
    rm -rf "$ROOT.partial"
    mkdir -p "$ROOT.partial"
    for p in $pkgs; do
        deb=""
        for f in "$WORK/debs-$SUITE/${p}_"*.deb; do [ -e "$f" ] && deb=$f; done
        [ -n "$deb" ] || die "apt-get download left no .deb for $p"
        dpkg -x "$deb" "$ROOT.partial"
    done
    # Python's sys.path names /usr/lib/python3/dist-packages and /usr/local/lib/...: give them
    # (empty) in the root so qemu's -L lookup never falls through to the host's x86 packages.
    mkdir -p "$ROOT.partial/usr/lib/python3/dist-packages" "$ROOT.partial/usr/local/lib/$PYV/dist-packages" \
             "$ROOT.partial/proc"
    ver=$(apt-cache "${APT[@]}" show "$PYV" | sed -n 's/^Version: //p' | head -1)
    printf '%s %s (Debian %s arm64)\n%s\n' "$PYV" "$ver" "$SUITE" "$pkgs" > "$ROOT.partial/.complete"
    mv "$ROOT.partial" "$ROOT"
fi
PYV=$(head -1 "$ROOT/.complete" | cut -d' ' -f1)
[ -x "$ROOT/usr/bin/$PYV" ] || die "$ROOT has no usr/bin/$PYV; delete $ROOT and re-run"

# qemu-user 7.2 (Debian bookworm's) shows the guest the host's x86 /proc/cpuinfo: the cpuinfo
# library inside onnxruntime finds no ARM processor in it and crashes (SIGSEGV) at import. qemu's
# -L lookup prefers ROOT/proc/cpuinfo, so write an arm64 one for the CPU model (qemu 10.0.2
# emulates its own and ignores this file).
"$PY" - "$ROOT/proc/cpuinfo" "$CPU" <<'EOF'
import sys
parts = {"cortex-a35": (0x41, 0xd04), "cortex-a53": (0x41, 0xd03), "cortex-a57": (0x41, 0xd07),
         "cortex-a72": (0x41, 0xd08), "cortex-a76": (0x41, 0xd0b), "neoverse-n1": (0x41, 0xd0c),
         "a64fx": (0x46, 0x001)}
impl, part = parts.get(sys.argv[2].split(",")[0], (0x41, 0xd0b))
n = 0
for rng in open("/sys/devices/system/cpu/possible").read().strip().split(","):
    n = max(n, int(rng.split("-")[-1]) + 1)
with open(sys.argv[1], "w") as f:
    for i in range(n):
        f.write(f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm cpuid\nCPU implementer\t: {impl:#x}\n"
                f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part:#05x}\nCPU revision\t: 0\n\n")
EOF
part_done "arm64 userland (apt)"

# -- 2. arm64 wheels --------------------------------------------------------------------------
SITE=$WORK/site-$PYV
SITE_FEATHER=$WORK/site-feather
pins=$("$PY" -c "
import importlib.metadata as m
print(' '.join(f'{d}=={m.version(d)}' for d in ('numpy', 'onnxruntime', 'tokenizers', 'pillow', 'rich')))")
glibc=$("$QEMU" -L "$ROOT" "$ROOT/usr/bin/$PYV" -S -c "import os; print(os.confstr('CS_GNU_LIBC_VERSION').split()[1])") \
    || die "the arm64 interpreter in $ROOT does not start under $QEMU"
minor=${glibc#2.}
plats=(--platform manylinux2014_aarch64)
for ((i = 17; i <= minor; i++)); do plats+=(--platform "manylinux_2_${i}_aarch64"); done
spec="$PYV glibc $glibc: $pins"
if [ -e "$SITE/.complete" ] && [ "$(cat "$SITE/.complete")" = "$spec" ]; then
    say "arm64 wheels: reusing $SITE ($pins)"
else
    say "arm64 wheels: $pins (cp${PYV#python} manylinux <= $glibc) -> $SITE"
    rm -rf "$SITE"
    "$PY" -m pip install -q --disable-pip-version-check --target "$SITE" "${plats[@]}" \
        --python-version "${PYV#python}" --implementation cp --only-binary=:all: $pins > "$WORK/pip-deps.log" 2>&1 \
        || { grep -v "WARNING: Location" "$WORK/pip-deps.log" | tail -5 >&2; die "pip could not install the arm64 wheels (log: $WORK/pip-deps.log)"; }
    echo "$spec" > "$SITE/.complete"
fi

# The quantization report's extra imports (feather.calibration.emulate uses onnx), in their own
# folder: the runtime checks above and below run without it on the path.
SITE_REPORT=$WORK/site-report
rpins=$("$PY" -c "
import importlib.metadata as m
print(' '.join(f'{d}=={m.version(d)}' for d in ('onnx', 'ml_dtypes', 'protobuf', 'typing_extensions')))") \
    || die "$PY lacks onnx / ml_dtypes / protobuf / typing_extensions"
rspec="$PYV glibc $glibc: $rpins"
if [ -e "$SITE_REPORT/.complete" ] && [ "$(cat "$SITE_REPORT/.complete")" = "$rspec" ]; then
    say "arm64 report wheels: reusing $SITE_REPORT ($rpins)"
else
    say "arm64 report wheels: $rpins -> $SITE_REPORT"
    rm -rf "$SITE_REPORT"
    # --no-deps: numpy comes from $SITE (onnx's other requirements are the pins above)
    "$PY" -m pip install -q --disable-pip-version-check --target "$SITE_REPORT" "${plats[@]}" --no-deps \
        --python-version "${PYV#python}" --implementation cp --only-binary=:all: $rpins > "$WORK/pip-report.log" 2>&1 \
        || { grep -v "WARNING: Location" "$WORK/pip-report.log" | tail -5 >&2; die "pip could not install the arm64 report wheels (log: $WORK/pip-report.log)"; }
    echo "$rspec" > "$SITE_REPORT/.complete"
fi
part_done "arm64 wheels (deps)"

# The project's wheel, from a copy of the working tree (setuptools writes build/ and *.egg-info
# beside the sources: not in the repository). Rebuilt every run: it is the code under test.
say "feather-vlm wheel from $REPO"
rm -rf "$WORK/src" "$WORK/wheel" "$SITE_FEATHER"
mkdir -p "$WORK/src" "$WORK/wheel"
if git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
    git -C "$REPO" ls-files -z -co --exclude-standard \
        | tar -C "$REPO" --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -C "$WORK/src" -xf -
else
    tar -C "$REPO" --exclude=.git --exclude='.venv*' --exclude=build --exclude='*.egg-info' --exclude=__pycache__ \
        -cf - . | tar -C "$WORK/src" -xf -
fi
"$PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/wheel" "$WORK/src" > "$WORK/pip-wheel.log" 2>&1 \
    || { tail -5 "$WORK/pip-wheel.log" >&2; die "could not build the feather-vlm wheel (log: $WORK/pip-wheel.log)"; }
whl=$(ls "$WORK"/wheel/feather_vlm-*.whl)
"$PY" -m pip install -q --no-deps --target "$SITE_FEATHER" "$whl" > "$WORK/pip-feather.log" 2>&1 \
    || { tail -5 "$WORK/pip-feather.log" >&2; die "could not install $whl (log: $WORK/pip-feather.log)"; }
# The sources' fingerprint (the wheel's RECORD: every file's sha256, no timestamps) decides
# whether the checkpoint and exports in WORK still fit the code under test.
FP=$("$PY" -c "
import hashlib, sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
rec = next(n for n in z.namelist() if n.endswith('.dist-info/RECORD'))
lines = sorted(l for l in z.read(rec).decode().splitlines() if '.dist-info/' not in l)
print(hashlib.sha256('\n'.join(lines).encode()).hexdigest()[:16])" "$whl")
echo "   $(basename "$whl") (sources $FP)"
part_done "feather-vlm wheel"

ARM_PATH=$SITE_FEATHER:$SITE
arm() {  # the arm64 interpreter with only the userland and the target folders in ARM_PATH (not
         # the repository's sources: run in WORK, and no script / cwd folder at the front of sys.path)
    (cd "$WORK" && env -u PYTHONHOME PYTHONPATH="$ARM_PATH" PYTHONNOUSERSITE=1 PYTHONSAFEPATH=1 \
        QEMU_CPU="$CPU" "$QEMU" -L "$ROOT" "$ROOT/usr/bin/$PYV" "$@")
}
say "aarch64 interpreter under qemu ($CPU)"
arm - <<'EOF' || die "the arm64 interpreter cannot import the runtime (see above)"
import platform, sys
import numpy, onnxruntime, tokenizers, PIL
from numpy._core._multiarray_umath import __cpu_features__ as f
import feather.runtime
print(f"   {platform.machine()} python {platform.python_version()} numpy {numpy.__version__} "
      f"onnxruntime {onnxruntime.__version__} tokenizers {tokenizers.__version__} pillow {PIL.__version__}")
print(f"   numpy CPU features: {' '.join(sorted(k for k, v in f.items() if v))}")
print(f"   feather from {feather.runtime.__file__}")
leaked = [m for m in ("torch", "transformers", "onnx") if m in sys.modules]
assert platform.machine() == "aarch64", platform.machine()
assert not leaked, f"importing feather.runtime imported {leaked}"
EOF
part_done "aarch64 import check"

# -- 3. host: tiny checkpoint, fp32 export, capture, int8 / int4 / int8-int4 ---------------
say "host: tiny checkpoint, fp32 export, capture, int8 / int4 / int8-int4 quantization -> $WORK"
if [ "$(cat "$WORK/exports.stamp" 2>/dev/null)" != "$FP" ]; then
    if [ -e "$WORK/exports.stamp" ] || [ -e "$WORK/export-fp32" ]; then
        echo "   the sources changed since the last exports: rebuilding them"
    fi
    # the capture pickle too: cpu_report.py unpickles it with the wheel's feather on aarch64
    rm -rf "$WORK/cache" "$WORK/export-fp32" "$WORK/export-int8" "$WORK/export-int4" "$WORK/export-int8-int4" \
           "$WORK/capture.pkl" "$WORK/exports.stamp"
fi
"$PY" "$HELPER" prepare "$WORK" > "$WORK/prepare.log" 2>&1 || { tail -15 "$WORK/prepare.log" >&2; die "preparing the exports failed (log: $WORK/prepare.log)"; }
grep '^  ' "$WORK/prepare.log" || true
echo "$FP" > "$WORK/exports.stamp"
part_done "x86 prepare (build+export+capture+quantize)"

# -- 4. the same generation on both sides ----------------------------------------------------
KINDS=(fp32 int8 int4)
say "x86_64 runs ($TOKENS greedy tokens)"
for k in "${KINDS[@]}"; do
    "$PY" "$HELPER" run "$WORK/export-$k" "$RES/x86-$k.npz" --tokens "$TOKENS" || die "x86 run of $k failed"
done
part_done "x86 runs (3 exports)"
say "aarch64 runs under qemu ($CPU)"
for k in "${KINDS[@]}"; do
    arm "$HELPER" run "$WORK/export-$k" "$RES/arm-$k.npz" --tokens "$TOKENS" --site "$SITE_FEATHER" --site "$SITE" \
        || die "aarch64 run of $k failed"
done
part_done "aarch64 runs (3 exports)"

say "compare x86_64 vs aarch64"
fails=()
for k in "${KINDS[@]}"; do
    ref=()
    [ "$k" = fp32 ] || ref=(--ref "$RES/x86-fp32.npz")
    "$PY" "$HELPER" compare "$RES/x86-$k.npz" "$RES/arm-$k.npz" --kind "$k" "${ref[@]}" --json "$RES/compare-$k.json" \
        2> "$RES/compare-$k.err" || fails+=("$(tail -1 "$RES/compare-$k.err" | sed 's/^aarch64_compare: FAIL: //')")
done
part_done "compare"

# -- 5. the quantization report on aarch64 ---------------------------------------------------
REPORT_SCRIPT=$WORK/src/tests/calibration/cpu_report.py  # from the same snapshot as the wheel
[ -f "$REPORT_SCRIPT" ] || die "no tests/calibration/cpu_report.py in the working tree"
say "quantization reports on aarch64 under qemu ($CPU), same capture and bounds as x86"
ARM_PATH=$SITE_FEATHER:$SITE:$SITE_REPORT
for m in int8 int4 int8-int4; do
    t=$(now)
    if arm "$REPORT_SCRIPT" "$WORK/capture.pkl" "$WORK/export-fp32" "$WORK/export-$m" "$m" \
           > "$RES/report-arm-$m.out" 2> "$RES/report-arm-$m.err" \
       && tail -1 "$RES/report-arm-$m.out" | "$PY" -c "import json, sys; json.loads(sys.stdin.read())" 2>/dev/null; then
        tail -1 "$RES/report-arm-$m.out" > "$RES/report-arm-$m.json"
        awk -v a="$t" -v b="$(now)" -v m="$m" 'BEGIN { printf "   %s: %.1f s\n", m, b - a }'
    else
        echo "   $m: cpu_report.py failed on aarch64 (log: $RES/report-arm-$m.err)"
        grep -v '^ *$' "$RES/report-arm-$m.err" | tail -3 | sed 's/^/     /'
    fi
done
ARM_PATH=$SITE_FEATHER:$SITE
"$PY" "$HELPER" reports "$WORK" > "$RES/reports.txt" 2> "$RES/reports.err" \
    || fails+=("$(tail -1 "$RES/reports.err" | sed 's/^aarch64_compare: FAIL: //')")
part_done "aarch64 reports (3 methods)"
T_PART=$T_ALL
part_done "total"

echo
"$PY" "$HELPER" summary "$WORK"
echo
if [ "${#fails[@]}" -gt 0 ]; then
    die "$(printf '%s; ' "${fails[@]}" | sed 's/; $//')"
fi
echo "aarch64_check: OK (fp32 matches, int8 / int4 within the quantization's own error, int8 / int4 / int8-int4" \
     "reports ok with x86's bounds; results in $RES)"
