#!/usr/bin/env bash
# The layers of design.md, checked on includes: a file in folder F may include project headers only
# from F and the folders F depends on (the linker checks calls: CMakeLists.txt, gemma_layer).
# Usage: tests/layering_check.sh [source root]
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
declare -A allowed=(
  [kernels]="kernels"
  [io]="io kernels"
  [model]="model io kernels"
  [peft]="peft model io kernels"
  [export]="export peft model io kernels"
  [data]="data io"
  [optim]="optim kernels"
  [trainer]="trainer optim data export peft model io kernels"
  [cli]="cli trainer optim data export peft model io kernels"
)
bad=0
for folder in "${!allowed[@]}"; do
  [ -d "$folder" ] || continue
  while IFS= read -r line; do
    file=${line%%:*}
    target=$(sed -E 's/.*#include "([a-z_]+)\/.*/\1/' <<<"$line")
    if [[ " ${allowed[$folder]} " != *" $target "* ]]; then
      echo "layering: $file includes $target/ (allowed for $folder/: ${allowed[$folder]})"
      bad=1
    fi
  done < <(grep -rHE '^\s*#\s*include "[a-z_]+/' "$folder" --include='*.h' --include='*.cpp' --include='*.cu' || true)
done
if ((bad)); then exit 1; fi
echo "layering: every include follows the layers"
