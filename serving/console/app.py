"""The console's web application: routes, the page frame, health, metrics and error pages.

Each page handler gathers its data through the modules beside this one and renders a template;
whatever a page depends on that is not there (the MLflow store, the feedback store, the
predictor, the events service) is shown as a sentence in the page (`Unavailable`), and an
unexpected failure is a short error page naming the exception, never a stack trace (the trace
goes to the log).

Handlers are plain `def`: FastAPI runs them in its thread pool, so MLflow's and SQLAlchemy's
blocking calls never stall the event loop. Work per request is bounded: outgoing calls have
timeouts, the monitoring counts are grouped by the database (a few hundred rows whatever the
volume), and the slow reads (MLflow, the experiment analysis, which reads every impression since
the challenger started, as `recsys rollout analyze` does) run at most once per 5 s however many
pages ask (`serving.console.recent`).

POSTs that change something (feedback, promote, rollback) are refused when the browser says
they come from another site (`Sec-Fetch-Site`, `Origin`, including `null`, else `Referer`), and
unless they carry the session's form token: every page sets a session cookie (HttpOnly,
SameSite=Strict) and its forms a hidden `token`, an HMAC of the session under a key the process
draws at start, which a page elsewhere can neither read nor compute. Requests naming a `Host`
the console does not serve are refused (400), so that a DNS name rebound to 127.0.0.1 gives a
page elsewhere nothing to read or post: IP literals and `localhost` are always served, names
only when listed (`recsys console --allowed-host`); /healthz and /metrics answer any Host
(probes and Prometheus name the pod's IP). A read-only console (`--read-only`) refuses all of
them: it writes nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import secrets
import threading
import time
from collections.abc import Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.console import charts, experiments, formatting, monitoring, tryit
from serving.console.clients import Refused, Unavailable
from serving.console.state import Console

log = logging.getLogger("recsys.console")

HERE = Path(__file__).resolve().parent
PAGES = (("try", "Try it", "/try"), ("experiments", "Experiments", "/experiments"),
         ("monitoring", "Monitoring", "/monitoring"), ("models", "Models", "/models"))
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
# The model report is a self-contained page of its own (inline style, base64 PNG plots).
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'self'"


SESSION_COOKIE = "recsys_console_session"
_SESSION = re.compile(r"[A-Za-z0-9_-]{32}")
ANY_HOST_PATHS = ("/healthz", "/metrics")


def _same_origin(request: Request) -> bool:
    """Whether the browser's headers say the request comes from a page of this console."""
    host = request.headers.get("host", "")
    site = request.headers.get("sec-fetch-site")
    if site and site not in ("same-origin", "none"):
        return False
    origin = request.headers.get("origin")
    if origin is not None:  # "null": a sandboxed frame, a data: URL, a redirect from elsewhere
        return origin != "null" and urlsplit(origin).netloc == host
    referer = request.headers.get("referer")
    if referer:
        return urlsplit(referer).netloc == host
    return True


class FormTokens:
    """A session id per browser (a cookie) and its form token: HMAC-SHA256 under a key drawn
    when the process starts (a restart asks open pages to be reloaded)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    @staticmethod
    def new_session() -> str:
        return secrets.token_urlsafe(24)  # 32 characters

    def token(self, session: str) -> str:
        return hmac.new(self._key, session.encode(), hashlib.sha256).hexdigest()

    def valid(self, session: str | None, token: str | None) -> bool:
        return bool(session and token) and hmac.compare_digest(self.token(session), token)


class HostCheck:
    """Which `Host` headers the console answers: IP literals and localhost (no DNS name an
    attacker controls can be one), and the names given, with or without a port."""

    def __init__(self, allowed: Sequence[str]):
        self.allowed = {h.strip().lower().rstrip(".") for h in allowed if h.strip()}

    def __call__(self, host_header: str | None) -> bool:
        host = (host_header or "").strip().lower()
        try:
            name = urlsplit(f"//{host}").hostname
        except ValueError:
            return False
        if not name:
            return False
        name = name.rstrip(".")
        if name == "localhost" or host in self.allowed or name in self.allowed:
            return True
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return False
        return True


def create_app(console: Console, *, allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The app; `allowed_hosts` None: no Host check (in-process use), else `HostCheck`'s."""
    host_allowed = None if allowed_hosts is None else HostCheck(allowed_hosts)
    tokens = FormTokens()

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        log.info("console ready: MLflow %s, feedback store %s, predictor %s, events %s",
                 console.config.tracking_uri, console.config.store_url,
                 console.config.predictor, console.config.events)
        threading.Thread(target=console.warm, name="console-warm", daemon=True).start()
        yield
        console.close()
        log.info("console stopped")

    app = FastAPI(title="recsys console", docs_url=None, redoc_url=None, openapi_url=None,
                  lifespan=lifespan)
    app.state.console = console
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    formatting.install(templates.env)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def page(request: Request, name: str, active: str, status_code: int = 200,
             **context: Any) -> HTMLResponse:
        context.update(pages=PAGES, active=active, config=console.config,
                       answered_by=console.answered_by, token=getattr(request.state, "form_token", ""))
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.middleware("http")
    async def measure(request: Request, call_next):
        started = time.perf_counter()
        session = request.cookies.get(SESSION_COOKIE)
        fresh = None
        if not session or not _SESSION.fullmatch(session):
            session = fresh = tokens.new_session()
        request.state.session, request.state.form_token = session, tokens.token(session)
        if (host_allowed is not None and request.url.path not in ANY_HOST_PATHS
                and not host_allowed(request.headers.get("host"))):
            fresh = None
            response: Response = JSONResponse(
                {"error": "refused: this console does not serve the host "
                 f"{(request.headers.get('host') or 'none')[:100]!r} (see recsys console "
                 "--allowed-host)"}, status_code=400)
            label_override = "bad-host"
        elif request.method == "POST" and not _same_origin(request):
            fresh = None
            response = JSONResponse(
                {"error": "refused: this form was posted from another site"}, status_code=403)
            label_override = "cross-site"
        else:
            label_override = None
            try:
                response = await call_next(request)
            except Exception as exc:  # a page never shows a stack trace: the log has it
                log.exception("unexpected error on %s", request.url.path)
                first = (str(exc).strip().splitlines() or [""])[0][:300]
                response = page(request, "error.html", "", status_code=500,
                                message=f"This page failed: {type(exc).__name__}: {first}. "
                                "The console's log has the details.")
        route = request.scope.get("route")
        label = label_override or getattr(route, "path", None) or (
            "/static" if request.url.path.startswith("/static/") else "unmatched")
        if fresh is not None:
            response.set_cookie(SESSION_COOKIE, fresh, httponly=True, samesite="strict", path="/")
        console.metrics.requests.labels(label, str(response.status_code)).inc()
        console.metrics.seconds.labels(label).observe(time.perf_counter() - started)
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 404:
            message = f"There is no page at {request.url.path}."
        elif exc.status_code == 405:
            message = f"{request.method} is not how {request.url.path} is used."
        else:
            message = str(exc.detail)
        return page(request, "error.html", "", status_code=exc.status_code, message=message)

    def stale_form(request: Request, token: str) -> HTMLResponse | None:
        """The refusal of a state-changing form without this session's token; None if it has
        it."""
        if tokens.valid(request.cookies.get(SESSION_COOKIE), token):
            return None
        return page(request, "error.html", "", status_code=403,
                    message="This form was not sent from a page of this console, or the page "
                    "is older than the console's last start: reload the page and send it again.")

    # ------------------------------------------------------------------ plumbing
    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(console.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index() -> RedirectResponse:
        return RedirectResponse("/try", status_code=303)

    # ------------------------------------------------------------------ Models
    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request):
        rows, problem, runs = [], None, []
        try:
            rows = console.registry.versions()
        except Unavailable as exc:
            problem = console.unavailable("mlflow", exc)
        from serving.console.registry_view import group_by_data_set

        return page(request, "models.html", "models", rows=rows, problem=problem,
                    groups=group_by_data_set(rows),
                    metric_names=[name for name, _ in _metric_columns(rows)], runs=runs)

    @app.get("/models/{version}/report", response_class=HTMLResponse)
    def model_report(request: Request, version: str):
        try:
            html = console.registry.report_html(version)
        except Unavailable as exc:
            return page(request, "error.html", "models", status_code=404,
                        message=console.unavailable("mlflow", exc))
        return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})

    # ------------------------------------------------------------------ Try it
    def try_context(user: str | None, k_text: str | None, like: str | None,
                    before: list[str] | None = None) -> dict[str, Any]:
        context: dict[str, Any] = {"user": user or "", "k": k_text or tryit.DEFAULT_K,
                                   "like": like or "", "shown": None, "similar": None,
                                   "error": None, "problem": None, "notice": None}
        try:
            context["k"] = k = tryit.check_k(k_text)
        except Refused as exc:
            context["error"] = str(exc)
            return context
        context["events_problem"] = console.events.ready()
        if context["events_problem"]:
            console.metrics.unavailable.labels("events").inc()
        if user is not None:
            try:
                user_id = tryit.check_user_id(user)
                answer = console.predictor.recommend(user_id, k, explain=True)
                context["shown"] = tryit.compare(answer, console.catalogue, before)
            except Refused as exc:
                context["error"] = str(exc)
            except Unavailable as exc:
                context["problem"] = console.unavailable("predictor", exc)
        if like:
            try:
                answer = console.predictor.similar(like.strip()[:tryit.MAX_ID_CHARS], k)
                context["similar"] = tryit.compare(answer, console.catalogue, None)
            except Refused as exc:
                context["error"] = str(exc)
            except Unavailable as exc:
                context["problem"] = console.unavailable("predictor", exc)
        return context

    def sample_users() -> list[str]:
        try:
            return console.catalogue.users(None)
        except Exception:  # a broken served copy: the text box still works
            log.warning("cannot list sample users", exc_info=True)
            return []

    @app.get("/try", response_class=HTMLResponse)
    def try_it(request: Request, user: str | None = None, k: str | None = None,
               like: str | None = None):
        context = try_context(user, k, like)
        status = 400 if context["error"] else 200
        return page(request, "try.html", "try", status_code=status, users=sample_users(),
                    **context)

    @app.post("/try/feedback", response_class=HTMLResponse)
    def feedback(request: Request, user: str = Form(""), item: str = Form(""),
                 action: str = Form(""), value: str | None = Form(None),
                 request_id: str | None = Form(None), model_version: str | None = Form(None),
                 position: str | None = Form(None), k: str | None = Form(None),
                 shown: str = Form(""), token: str = Form("")):
        if (refusal := stale_form(request, token)) is not None:
            return refusal
        before = [i for i in shown.split(",") if i] or None
        fragment = request.headers.get("x-console-fragment") == "1"
        notice = error = problem = None
        event_type = tryit.ACTIONS.get(action, action)
        if console.config.read_only:
            # Read-only means no writes at all: not even an event for the events service.
            console.metrics.feedback.labels(event_type, "refused").inc()
            return page(request, "error.html", "try", status_code=403,
                        message="This console is read-only: it stores no feedback events. Send "
                        "them to the events API (POST /v1/events), or start the console without "
                        "--read-only.")
        try:
            user_id = tryit.check_user_id(user)
            event = tryit.feedback_event(action, user_id=user_id, item_id=item.strip(),
                                         value=value, request_id=request_id,
                                         model_version=model_version, position=position)
            console.events.send(event)
            console.metrics.feedback.labels(event_type, "stored").inc()
        except Refused as exc:
            console.metrics.feedback.labels(event_type, "refused").inc()
            error = f"The event was not stored: {exc}"
        except Unavailable as exc:
            console.metrics.feedback.labels(event_type, "unavailable").inc()
            problem = console.unavailable("events", exc)
        context = try_context(user, k, None, before)
        if error is None and problem is None and context.get("shown") is not None:
            k_value = context["k"]
            try:
                answer, changed = tryit.ask_until_changed(
                    lambda: console.predictor.recommend(user.strip(), k_value, explain=True),
                    before or [],
                    item.strip(), event_type)
                context["shown"] = tryit.compare(answer, console.catalogue, before)
                title = next((i.item.title for i in context["shown"].items
                              if i.item.item_id == item), None) or next(
                    (i.title for i in context["shown"].dropped if i.item_id == item), item)
                verb = {"view": "Viewed", "like": "Liked", "dislike": "Disliked",
                        "rate": f"Rated {value}"}[action]
                notice = (f"{verb} “{title}”: stored by the events service. "
                          + (f"The next answer changed: {context['shown'].summary()}." if changed
                             else f"The predictor's answer did not change within "
                             f"{tryit.FRESH_WITHIN_SECONDS:g} s: it takes new events into "
                             "account only when it reads the online store (see `recsys serve "
                             "--help`)."))
            except Unavailable as exc:
                problem = console.unavailable("predictor", exc)
        context.update(notice=notice, error=error or context["error"],
                       problem=problem or context["problem"])
        status = 400 if error else 200
        if fragment:
            return templates.TemplateResponse(request, "_results.html", {
                **context, "config": console.config, "answered_by": console.answered_by,
                "token": request.state.form_token},
                status_code=status, headers={"x-console-fragment": "1"})
        return page(request, "try.html", "try", status_code=status, users=sample_users(),
                    **context)

    # ------------------------------------------------------------------ Monitoring
    @app.get("/monitoring", response_class=HTMLResponse)
    def monitoring_page(request: Request, window: str | None = None):
        if window and window not in monitoring.WINDOWS:
            return page(request, "error.html", "monitoring", status_code=400,
                        message=f"window must be one of {', '.join(monitoring.WINDOWS)}, not "
                        f"{window[:40]!r}.")
        window = window or monitoring.DEFAULT_WINDOW
        data = console.recent.get(("monitoring", window),
                                  lambda: monitoring.gather(console, window))
        return page(request, "monitoring.html", "monitoring", m=data,
                    windows=list(monitoring.WINDOWS), charts=_monitoring_charts(data))

    @app.get("/monitoring/drift/{run_id}/report", response_class=HTMLResponse)
    def drift_report(request: Request, run_id: str):
        try:
            html = console.registry.run_artifact(run_id, "check/drift-report.html")
        except Unavailable as exc:
            return page(request, "error.html", "monitoring", status_code=404,
                        message=console.unavailable("mlflow", exc))
        return HTMLResponse(html, headers={"Content-Security-Policy": REPORT_CSP})

    # ------------------------------------------------------------------ Experiments
    def experiment_view():
        return console.recent.get("experiments", lambda: experiments.gather(console))

    @app.get("/experiments", response_class=HTMLResponse)
    def experiments_page(request: Request):
        view = experiment_view()
        return page(request, "experiments.html", "experiments", view=view,
                    charts=experiments.charts(view) if view.analysis else {},
                    confirm=None, done=None, refused=None)

    @app.get("/experiments/decisions/{run_id}/analysis.json")
    def decision_evidence(request: Request, run_id: str):
        try:
            body = console.registry.run_artifact(run_id, "analysis.json")
        except Unavailable as exc:
            return page(request, "error.html", "experiments", status_code=404,
                        message=console.unavailable("mlflow", exc))
        return Response(body, media_type="application/json")

    @app.post("/experiments/{action}", response_class=HTMLResponse)
    def experiments_action(request: Request, action: str, challenger: str = Form(""),
                           confirmed: str = Form(""), token: str = Form("")):
        if action not in ("promote", "rollback"):
            raise StarletteHTTPException(404)
        if (refusal := stale_form(request, token)) is not None:
            return refusal
        view = experiment_view()
        if confirmed != "yes":  # the first press asks; the page's second form confirms
            target = view.target
            confirm = None if target is None else {
                "action": action, "challenger": target.challenger,
                "text": experiments.confirm_text(action, target)}
            return page(request, "experiments.html", "experiments", view=view,
                        charts=experiments.charts(view) if view.analysis else {},
                        confirm=confirm, done=None, refused=None)
        done, refused = experiments.act(console, action, challenger)
        if done:
            log.info("experiments: %s by the console: %s", action, "; ".join(done))
        console.recent.clear()
        console.registry.recent.clear()
        view = experiment_view()
        return page(request, "experiments.html", "experiments",
                    status_code=409 if refused else 200, view=view,
                    charts=experiments.charts(view) if view.analysis else {},
                    confirm=None, done=done, refused=refused)

    return app


def _monitoring_charts(data) -> dict[str, Any]:
    out = {}
    if data.events_by_type:
        series = [charts.Series(k, v, EVENT_COLORS.get(k)) for k, v in data.events_by_type.items()]
        out["events"] = charts.stacked_bars("Feedback events over time, by type", data.starts,
                                            data.step, series, unit="events")
        out["events_legend"] = charts.legend(series)
    if data.requests_by_version:
        series = [charts.Series(k, v) for k, v in data.requests_by_version.items()]
        out["requests"] = charts.stacked_bars("Answered requests over time, by model version",
                                              data.starts, data.step, series, unit="requests")
        out["requests_legend"] = charts.legend(series)
    if data.cold_by_bucket and any(v is not None for v in data.cold_by_bucket):
        out["cold"] = charts.lines(
            "Share of cold-start answers", [s + data.step / 2 for s in data.starts],
            [charts.Series("cold-start share", data.cold_by_bucket, "#228833")],
            y_range=(0.0, 1.0), summary=f"cold-start share over time, overall "
            f"{formatting.share(data.cold_share)}")
    return out


EVENT_COLORS = {"click": "#4477aa", "like": "#228833", "dislike": "#ee6677",
                "rating": "#ccbb44", "consume": "#aa3377", "impression": "#bbbbbb"}


def _metric_columns(rows) -> list[tuple[str, str]]:
    from serving.console.registry_view import METRICS

    return [(name, key) for name, key in METRICS if any(name in r.metrics for r in rows)]
