#!/bin/sh
# data.dvc, dvc.lock and params.yaml are links into /opt/mmguard/state, a volume, so a recreated
# container keeps the last tracked data, the last reproduced pipeline and the params it used.
# On an empty volume, seed them from the copies baked into the image.
set -eu
for name in data.dvc dvc.lock params.yaml; do
  if [ ! -e "/opt/mmguard/state/${name}" ]; then
    cp "/opt/mmguard/seed/${name}" "/opt/mmguard/state/${name}"
  fi
done
exec "$@"
