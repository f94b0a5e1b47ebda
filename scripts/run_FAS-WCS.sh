#!/usr/bin/env bash
# FAS on the WCS protocols (targets CeFA, CASIA-SURF, WMCA) with a row of finetune_FAS.sh: SIZE=ViT-B (default),
# ViT-S, ViT-L or FS-Adapter-ViT-{S,B,L}; settings and overrides in finetune_FAS.sh.
exec "$(dirname "${BASH_SOURCE[0]}")/finetune_FAS.sh" WCS "${SIZE:-ViT-B}" "$@"
