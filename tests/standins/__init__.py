"""Stand-ins speaking real wire formats, for peers that cannot run on a test machine (a GPU
tenant, a cloud provider) or for behaviour a real one cannot be made to show on demand
(llama.cpp's "Loading model" 503, a backend failing on cue). Where only a working
OpenAI-compatible server is needed, tests use a real llama-server (tests/llama.py).

* `vllm.VllmStandin`: OpenAI API + vLLM's /metrics, scriptable faults (openai_server.Fault).
* `llamacpp.LlamaCppStandin`: 503 "Loading model" on /health while loading.
* `egress.EgressStandin`: the router -> egress protocol on a unix socket (docs/router.md);
  records every request: the cloud canary (router tests that script the egress itself).
* `cloud.CloudStandin`: a cloud provider (bearer key, streamed usage, 429 + Retry-After,
  5xx); records every request: the cloud canary behind the real mushishi-egress.
* `gpumode.GpuModeStandin`: io.mushishi.GpuMode1 on a real (private) D-Bus.
* `bus.PrivateBus`: a real dbus-daemon on a temporary socket.
"""
