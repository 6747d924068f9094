# Sourced by the test scripts: where the tests' Python lives. A virtual environment keyed by
# the pinned requirements, outside the clone so a second clean clone on the same machine
# reuses it; GPUCTL_TEST_VENV overrides the place.
GPUCTL_TEST_VENV="${GPUCTL_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/gpuctl/test-venv}"
# llama.cpp's server is built for a conservative x86-64 instruction set (AVX2, FMA, F16C;
# no AVX-512, no AMX), never tuned to the building CPU: such a build crashed in llama_decode on an
# Intel Xeon with AMX (issue 14), and the same environment must run on AMD and Intel alike.
GPUCTL_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_BMI2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
