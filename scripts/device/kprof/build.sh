#!/bin/bash
# builds libkprof.so (see kprof.cpp) into $1 (default .carry): CUDA's cupti.h and libcupti from CUDA_HOME or /usr/local/cuda
set -eu
cuda=${CUDA_HOME:-$(ls -d /usr/local/cuda /usr/local/cuda-* 2>/dev/null | head -1)}
inc=$(dirname "$(find "$cuda"/ -name cupti.h | head -1)")
lib=$(dirname "$(find "$cuda"/ -name 'libcupti.so*' | head -1)")
out=${1:-.carry}
mkdir -p "$out"
g++ -O2 -std=c++17 -shared -fPIC -I"$inc" -I"$cuda/include" "$(dirname "$0")/kprof.cpp" -o "$out/libkprof.so" -L"$lib" -lcupti -Wl,-rpath,"$lib"
echo "$out/libkprof.so (cupti from $lib)"
