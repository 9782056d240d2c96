#!/usr/bin/env bash
# Lint: (a) clang-format (.clang-format) over every tracked C++ file (*.h *.cpp *.cu), read-only;
# (b) clang-tidy (.clang-tidy) on the .cpp files changed since a base commit, using the build's
# compile database. Exits non-zero if either finds something.
# Usage: scripts/lint.sh [files...]   explicit files for clang-tidy (default: the changed ones)
#   LINT_BASE=<commit>   base for "changed" (default: merge-base of HEAD and origin/main when that
#                        is not HEAD itself, else HEAD~1); working-tree and untracked changes count
#   LINT_BUILD_DIR=<dir> build tree holding compile_commands.json (default: <repo>/build)
#   LINT_JOBS=<n>        parallel clang-tidy processes (default: nproc)
set -euo pipefail
# Explicit files are relative to the caller's directory: make them absolute before moving.
explicit=()
for f in "$@"; do
  explicit+=("$(realpath -m -- "$f")")
done
build=""
[ -z "${LINT_BUILD_DIR:-}" ] || build=$(realpath -m -- "$LINT_BUILD_DIR")
cd "$(dirname "$0")/.."
root=$PWD
build=${build:-$root/build}
jobs=${LINT_JOBS:-$(nproc)}

log() { printf '[lint] %s\n' "$*"; }

# The tools (Debian's clang-format and clang-tidy), installed like scripts/setup.sh does.
missing=()
command -v clang-format >/dev/null || missing+=(clang-format)
command -v clang-tidy >/dev/null || missing+=(clang-tidy)
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0

# (a) clang-format, every tracked C++ file (that is in the working tree).
unformatted=()
checked=0
while IFS= read -r f; do
  [ -f "$f" ] || continue
  checked=$((checked + 1))
  clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done < <(git ls-files -- '*.h' '*.cpp' '*.cu')
if ((${#unformatted[@]})); then
  log "clang-format: ${#unformatted[@]} of $checked files not formatted (clang-format -i fixes them):"
  printf '  %s\n' "${unformatted[@]}"
  status=1
else
  log "clang-format: all $checked files formatted"
fi

# (b) clang-tidy on the changed (or given) .cpp files that the compile database knows.
db=$build/compile_commands.json
tidy_summary=""
if [ ! -f "$db" ]; then
  log "clang-tidy: no $db (configure the build first: scripts/setup.sh)"
  tidy_summary="not run (no compile database)"
  status=1
else
  candidates=()
  if ((${#explicit[@]})); then
    candidates=("${explicit[@]}")
    log "clang-tidy: ${#candidates[@]} file(s) given"
  else
    base=""
    if [ -n "${LINT_BASE:-}" ]; then
      base=$(git rev-parse --verify -q "${LINT_BASE}^{commit}") || {
        log "clang-tidy: LINT_BASE=$LINT_BASE is not a commit"; exit 2; }
    else
      head=$(git rev-parse -q --verify 'HEAD^{commit}' || true)
      if git rev-parse -q --verify 'origin/main^{commit}' >/dev/null; then
        mb=$(git merge-base HEAD origin/main || true)
        [ -n "$mb" ] && [ "$mb" != "$head" ] && base=$mb
      fi
      [ -n "$base" ] || base=$(git rev-parse -q --verify 'HEAD~1^{commit}' || true)
    fi
    if [ -z "$base" ]; then
      log "clang-tidy: no base commit (shallow clone?); set LINT_BASE or pass files"
    else
      log "clang-tidy: files changed since $(git rev-parse --short "$base")"
      while IFS= read -r f; do
        [ -f "$f" ] && candidates+=("$root/$f")
      done < <({ git diff --name-only --diff-filter=d "$base" -- '*.h' '*.cpp'
                 git ls-files --others --exclude-standard -- '*.h' '*.cpp'; } | sort -u)
    fi
  fi

  # A compile database without the precompiled header: the build's PCH is GCC's, which clang
  # (clang-tidy) cannot read, so drop -include .../cmake_pch.hxx, -Winvalid-pch and clang's
  # -Xclang -include-pch/-include forms. Then pick the .cpp files it has (a changed header stands
  # for the .cpp beside it); .cu files are skipped.
  mkdir -p "$tmp/db"
  python3 - "$db" "$tmp/db/compile_commands.json" "$tmp/files" "${candidates[@]}" <<'PY'
import json, os, shlex, sys

src, dst, files_out, *candidates = sys.argv[1:]
with open(src) as f:
    entries = json.load(f)

def strip_pch(args):
    out, i = [], 0
    while i < len(args):
        a = args[i]
        nxt = args[i + 1] if i + 1 < len(args) else ""
        if a == "-Winvalid-pch" or a.startswith("-fpch-"):
            i += 1
        elif a in ("-include", "-include-pch") and "cmake_pch" in nxt:
            i += 2
        elif a.startswith("-include") and "cmake_pch" in a:
            i += 1
        elif a == "-Xclang" and nxt in ("-include", "-include-pch") and i + 3 < len(args) \
                and "cmake_pch" in args[i + 3]:
            i += 4
        else:
            out.append(a)
            i += 1
    return out

known = set()
for e in entries:
    args = e["arguments"] if "arguments" in e else shlex.split(e["command"])
    e.pop("command", None)
    e["arguments"] = strip_pch(args)
    path = e["file"] if os.path.isabs(e["file"]) else os.path.join(e["directory"], e["file"])
    known.add(os.path.normpath(path))
with open(dst, "w") as f:
    json.dump(entries, f, indent=1)

picked, skipped = [], []
for c in candidates:
    c = os.path.normpath(c)
    stem, ext = os.path.splitext(c)
    if ext == ".h":
        c = stem + ".cpp"
        if c not in known:
            continue  # a header with no .cpp beside it: checked through the files that include it
    if ext == ".cu":
        print(f"[lint] clang-tidy: CUDA source, skipped: {os.path.relpath(c)}")
    elif c not in known:
        skipped.append(c)
    elif c not in picked:
        picked.append(c)
for s in skipped:
    print(f"[lint] clang-tidy: not in the compile database, skipped: {os.path.relpath(s)}")
with open(files_out, "w") as f:
    f.write("".join(p + "\n" for p in picked))
PY
  mapfile -t tidy_files < "$tmp/files"
  if ((${#tidy_files[@]} == 0)); then
    log "clang-tidy: no .cpp files to check"
    tidy_summary="ran on 0 files"
  else
    log "clang-tidy: checking ${#tidy_files[@]} file(s) with $jobs job(s)"
    export TIDY_DB=$tmp/db TIDY_OUT=$tmp/out
    mkdir -p "$TIDY_OUT"
    tidy_one() {
      local log_file=$TIDY_OUT/$(printf '%s' "$1" | tr '/' '_').log
      if clang-tidy -p "$TIDY_DB" --quiet --warnings-as-errors='*' \
           --extra-arg=-Wno-unknown-warning-option "$1" >"$log_file" 2>&1; then
        rm -f "$log_file"
      fi
    }
    export -f tidy_one
    printf '%s\0' "${tidy_files[@]}" | xargs -0 -n1 -P "$jobs" bash -c 'tidy_one "$1"' _
    tidy_bad=()
    for f in "${tidy_files[@]}"; do
      log_file=$TIDY_OUT/$(printf '%s' "$f" | tr '/' '_').log
      if [ -f "$log_file" ]; then
        tidy_bad+=("${f#"$root"/}")
        # clang-tidy's own chatter ("N warnings generated.", suppressed counts) is noise here.
        noise='^[0-9]+ warnings?( and [0-9]+ errors?)? generated\.$|^Suppressed [0-9]+ warnings'
        noise+='|^Use -header-filter|^Error while processing'
        grep -v -E "$noise" "$log_file" || true
      fi
    done
    if ((${#tidy_bad[@]})); then
      tidy_summary="findings in ${#tidy_bad[@]} of ${#tidy_files[@]} files: ${tidy_bad[*]}"
      status=1
    else
      tidy_summary="clean on ${#tidy_files[@]} files"
    fi
  fi
fi

log "summary: clang-format: ${#unformatted[@]} unformatted of $checked;" \
    "clang-tidy: ${tidy_summary:-not run}"
((status == 0)) && log "OK" || log "FAILED"
exit "$status"
