"""The `glitches gateway` command: serve the OpenAI-compatible HTTP API with uvicorn."""

from __future__ import annotations

import click

from glitches.cli_tls import client_tls, client_tls_options
from glitches.client import DEFAULT_ADDRESS
from glitches.services.generation.models import DEFAULT_MODEL


@click.command("gateway")
@click.option("--scheduler", default=DEFAULT_ADDRESS, envvar="GLITCHES_SCHEDULER", show_default=True,
              help="gRPC address of the scheduler.")
@click.option("--host", default="127.0.0.1", envvar="GLITCHES_GATEWAY_HOST", show_default=True,
              help="Interface to bind.")
@click.option("--port", default=8000, type=int, envvar="GLITCHES_GATEWAY_PORT", show_default=True,
              help="HTTP port (0: any free port).")
@click.option("--model", default=DEFAULT_MODEL, envvar="GLITCHES_MODEL", show_default=True,
              help="The model the cluster serves: its tokenizer renders chat templates.")
@click.option("--default-max-tokens", default=256, type=int, show_default=True,
              help="max_tokens of a chat request that gives none.")
@click.option("--timeout-s", default=0.0, type=float, show_default=True,
              help="Deadline of each request to the scheduler, seconds (0: none).")
@click.option("--api-keys-file", default="", envvar="GLITCHES_GATEWAY_API_KEYS_FILE",
              help="Require `Authorization: Bearer <key>` with a key from this file: one per line, `<key>` or "
                   "`<key> <tenant>` (the scheduler's keys file format; the gateway uses the keys).")
@click.option("--api-keys", default="", envvar="GLITCHES_GATEWAY_API_KEYS",
              help="Comma-separated keys (prefer the file).")
@click.option("--scheduler-api-key", default=None, envvar="GLITCHES_API_KEY",
              help="Key the gateway sends to a scheduler that requires one.")
@click.option("--forward-api-key", is_flag=True, envvar="GLITCHES_GATEWAY_FORWARD_API_KEY",
              help="Send each client's own key to the scheduler instead of --scheduler-api-key, so the scheduler "
                   "keeps each tenant's prefix cache apart (else every client shares the gateway's key's cache). "
                   "Needs --api-keys-file, with the scheduler's keys (the same file).")
@click.option("--requests-per-minute-per-client", default=0.0, type=float,
              envvar="GLITCHES_GATEWAY_REQUESTS_PER_MINUTE_PER_CLIENT", show_default=True,
              help="Requests per minute per client: per API key with keys, else per client IP (0: no limit). "
                   "Past it: HTTP 429 with Retry-After.")
@click.option("--requests-per-minute-per-user", default=0.0, type=float,
              envvar="GLITCHES_GATEWAY_REQUESTS_PER_MINUTE_PER_USER", show_default=True,
              help="Also, completions per minute per OpenAI `user` field within each client (0: no limit).")
@click.option("--max-stop-strings", default=16, type=int, envvar="GLITCHES_GATEWAY_MAX_STOP_STRINGS", show_default=True,
              help="Most stop strings one request may give (OpenAI: 4; evaluation harnesses send more).")
@click.option("--max-top-logprobs", default=20, type=int, envvar="GLITCHES_GATEWAY_MAX_TOP_LOGPROBS",
              show_default=True, help="Largest top_logprobs on /v1/chat/completions.")
@click.option("--max-completion-logprobs", default=5, type=int, envvar="GLITCHES_GATEWAY_MAX_COMPLETION_LOGPROBS",
              show_default=True, help="Largest logprobs on /v1/completions.")
@click.option("--max-choices-in-flight", default=16, type=int, envvar="GLITCHES_GATEWAY_MAX_CHOICES_IN_FLIGHT",
              show_default=True, help="Choices (prompts x n) of one request running at once; the rest wait for "
              "them. A streamed response may ask for at most this many.")
@click.option("--https-cert", default="", envvar="GLITCHES_GATEWAY_HTTPS_CERT",
              help="PEM certificate: serve HTTPS instead of HTTP (with --https-key).")
@click.option("--https-key", default="", envvar="GLITCHES_GATEWAY_HTTPS_KEY", help="PEM private key of --https-cert.")
@click.option("--max-body-bytes", default=4 * 1024 * 1024, type=int, envvar="GLITCHES_GATEWAY_MAX_BODY_BYTES",
              show_default=True, help="Request bodies above this many bytes are refused with 413.")
@click.option("--header-timeout-s", default=10.0, type=float, envvar="GLITCHES_GATEWAY_HEADER_TIMEOUT_S",
              show_default=True, help="A connection whose request headers take longer is closed (slowloris).")
@click.option("--keep-alive-s", default=5, type=int, envvar="GLITCHES_GATEWAY_KEEP_ALIVE_S", show_default=True,
              help="An idle kept-alive connection is closed after this many seconds.")
@click.option("--max-concurrency", default=1024, type=int, envvar="GLITCHES_GATEWAY_MAX_CONCURRENCY",
              show_default=True, help="Connections + in-flight requests above this are answered 503.")
@client_tls_options
def gateway_cmd(scheduler, host, port, model, default_max_tokens, timeout_s, api_keys_file, api_keys,
                scheduler_api_key, forward_api_key, requests_per_minute_per_client, requests_per_minute_per_user,
                max_stop_strings,
                max_top_logprobs, max_completion_logprobs, max_choices_in_flight, https_cert, https_key,
                max_body_bytes, header_timeout_s, keep_alive_s, max_concurrency, **tls) -> None:
    """OpenAI-compatible HTTP API (/v1/models, /v1/completions, /v1/chat/completions, /v1/responses) in front of the scheduler."""
    import uvicorn

    from glitches.cluster import free_port
    from glitches.gateway.app import Gateway, create_app
    from glitches.gateway.chat import load_chat_template, model_limits
    from glitches.gateway.schemas import Limits
    from glitches.gateway.server import ServerLimits, uvicorn_options
    from glitches.services.auth.api_keys import load_api_keys
    from glitches.services.runtime.errors import GlitchesError as ServiceError
    from glitches.services.generation.models import resolve_model

    if default_max_tokens < 1:
        raise click.UsageError("--default-max-tokens must be at least 1")
    if requests_per_minute_per_client < 0 or requests_per_minute_per_user < 0:
        raise click.UsageError("--requests-per-minute-per-client and --requests-per-minute-per-user must be >= 0 "
                               "(0: no limit)")
    if max_body_bytes < 1 or header_timeout_s <= 0 or keep_alive_s < 1 or max_concurrency < 1:
        raise click.UsageError("--max-body-bytes, --header-timeout-s, --keep-alive-s and --max-concurrency "
                               "must be positive")
    if min(max_stop_strings, max_top_logprobs, max_completion_logprobs) < 0:
        raise click.UsageError("--max-stop-strings, --max-top-logprobs and --max-completion-logprobs must be >= 0")
    if max_choices_in_flight < 1:
        raise click.UsageError("--max-choices-in-flight must be at least 1")
    if bool(https_cert) != bool(https_key):
        raise click.UsageError("give --https-cert and --https-key together")
    scheduler_tls = client_tls(tls)  # the link to the scheduler: TLS/mTLS with --tls-*
    try:
        served = resolve_model(model).name
        template = load_chat_template(model)
        context_tokens, max_token_chars = model_limits(model)
        keys = load_api_keys(api_keys_file, api_keys)
    except (ServiceError, ValueError) as error:
        raise click.UsageError(str(error)) from None
    if forward_api_key and not keys:
        raise click.UsageError("--forward-api-key needs --api-keys-file (the scheduler's keys): the gateway "
                               "forwards only keys it has checked")
    port = port or free_port()
    gateway = Gateway(scheduler, template, served, default_max_tokens=default_max_tokens,
                      timeout_s=timeout_s or None, api_keys=keys, scheduler_api_key=scheduler_api_key,
                      forward_api_key=forward_api_key,
                      scheduler_tls=scheduler_tls, requests_per_minute_per_client=requests_per_minute_per_client,
                      requests_per_minute_per_user=requests_per_minute_per_user, max_body_bytes=max_body_bytes,
                      context_tokens=context_tokens, max_token_chars=max_token_chars,
                      limits=Limits(max_stop_strings, max_top_logprobs, max_completion_logprobs,
                                    max_choices_in_flight))
    limits = ServerLimits(header_timeout_s, keep_alive_s, max_concurrency=max_concurrency)
    scheme = "https" if https_cert else "http"
    link = "mTLS" if scheduler_tls.cert else "TLS" if scheduler_tls.enabled else "plaintext"
    click.echo(f"gateway {scheme}://{host}:{port} -> scheduler {scheduler} ({link})", err=True)
    uvicorn.run(create_app(gateway), host=host, port=port, log_level="info", access_log=False,
                ssl_certfile=https_cert or None, ssl_keyfile=https_key or None, **uvicorn_options(limits))
