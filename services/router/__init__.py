"""mushishi-router: one OpenAI- and Anthropic-compatible endpoint, routed by profile and tier.

A request, in the order it meets the modules:

* `http_api` — the routes: authenticates the caller (API key or unix peer), reads and checks
  the body, resolves the profile, creates the request's record (`call.Call`) and hands it to
  the chain policy; `/status`, `/ready`, `/health`, `/metrics` too.
* `policy` — the chain policy: the GPU mode the chain needs (wait for a switch, ask for
  one, then the backend's first probe), each hop judged from state, slots and overflow,
  fallbacks, the T1 queue, the final error. `forward()` gets one frozen
  bundle (`policy.Forwarding`) of what it needs.
* `relay` — one attempt on one hop: send, wait for the first byte, relay the whole answer
  or the stream (no splice after the first byte), translate for Anthropic callers.
* `accounting` — what is counted when a request ends: metrics, the journal record, the
  trace, the cloud share.
* `errors` — the error wire format: stable codes, their HTTP status, error bodies.
* `call` — the request's record (`Call`: only its methods write it) and the body sent to a
  hop (`JsonBody`).

What they read and decide with:

* `core` — pure decisions: the compiled route table, hop verdicts, mode gates, final errors.
* `state` — live routing state: backend health, concurrency slots, the T1 queues, the GPU
  mode, and the change signal waiters wake on.
* `upstream` and `http1` — the pools to backends and to the egress, the connect-time
  sovereignty check, and the small HTTP/1.1 client that speaks to them (httptools parses
  the answers).
* `health` — active health probes of local backends.
* `gpu_mode` — the io.mushishi.GpuMode1 client that follows gpud; `mode_switch` — switches
  nobody typed: a request's mode (one call per mode, the dwell time) and the idle return.
* `feedback` — SSE comment lines for a streamed request while it waits.
* `status_view` — what the router says about itself: `/status`, `/ready`, the sovereignty
  layers, the STATUS= line; `metrics` — the Prometheus metrics and the scrape-time gauges.
* `tenants` — follows the tenants' published confinement (the fourth sovereignty layer) and
  refuses T1 work to the backends of a tenant that is not confined.
* `anthropic` (Messages ⇄ chat), `cloud_share` (hour/day shares), `confinement` (the
  kernel self-check), `traces` (OTLP spans).
* `app` — wiring only: builds all of the above from the settings, the listeners, the
  daemon's lifecycle; `__main__` — the entry point.
"""
