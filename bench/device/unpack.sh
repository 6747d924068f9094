# Sourced by the device scripts, with $W (a fresh work folder) and $OUT set: unpacks the
# binaries carried in .device/bin (or kept in /tmp/persist by an earlier call on the same
# machine) into $W/bin and points the loader at the CUDA libraries the agent links
# (cuBLAS, cuRAND, the runtime), which come with the host's CUDA or PyTorch.
rm -rf "$W" && mkdir -p "$W/bin" "$W/home" "$OUT"
for b in gpuctl-agent gpuctl; do
  src=.device/bin/$b.xz; [ -f "$src" ] || src=/tmp/persist/$b.xz
  xz -dc "$src" > "$W/bin/$b" || echo "unpack: no $b.xz carried or kept" >&2
done
chmod +x "$W/bin/"*
LIBDIRS=$(find /usr/local/cuda* /usr/lib /opt $(python3 -c 'import site; print(" ".join(site.getsitepackages()))') \
  \( -name 'libcublas.so.13*' -o -name 'libcurand.so.10*' -o -name 'libcudart.so.13*' -o -name 'libcublasLt.so.13*' \) 2>/dev/null | xargs -rn1 dirname | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="${LIBDIRS}${LD_LIBRARY_PATH:-}"
