"""Server-rendered HTML for the session report and the operator page.

Plain HTML and inline SVG: readable without JavaScript and on a phone
(one column below 700 px, charts scale with their viewBox, wide tables
scroll inside their box).  Every dynamic value goes through ``escape``.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from html import escape
from typing import Any, Iterable
from urllib.parse import quote

from aiohttp import web

from .charts import Series, bar_chart, clock, line_chart
from .reports import Overview, SessionReport, Table


LIVE_REFRESH = 30   # seconds between reloads of a live session's report


def hours(seconds: float) -> str:
    """Watch time as h:mm (or m:ss under an hour)."""
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}:{seconds % 60:02d} min"
    return f"{seconds // 3600}:{(seconds % 3600) // 60:02d} h"


def when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def layout(title: str, body: str, *, scripts: Iterable[str] = (), refresh: int = 0) -> str:
    # common.js shows the privacy-policy change notice to signed-in people.
    tags = "".join(f'<script src="{escape(s)}" defer></script>' for s in ("/static/common.js", *scripts))
    if refresh:     # a live session's report follows it without any script
        tags += f'<meta http-equiv="refresh" content="{int(refresh)}">'

    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)} · ODS Media</title><link rel=\"icon\" href=\"data:,\">"
            "<link rel=\"stylesheet\" href=\"/static/style.css\">"
            "<link rel=\"stylesheet\" href=\"/static/analytics.css\">" + tags + "</head><body>"
            "<header><h1><a href=\"/\">ODS Media</a></h1><nav><a href=\"/privacy\">Privacy</a></nav></header>"
            f"<main class=\"analytics\">{body}</main></body></html>")


def html_response(text: str, status: int = 200) -> web.Response:
    """A page with the site's page headers (web.pages: strict CSP, no caching, no sniffing)."""
    from web.pages import CSP

    return web.Response(text=text, status=status, content_type="text/html", headers={
        "Content-Security-Policy": CSP, "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin"})


def _cell(value: Any) -> str:
    if isinstance(value, datetime):
        return escape(when(value))
    if isinstance(value, float):
        return f"{value:g}"
    return escape(str(value))


def table(t: Table, csv_url: str, *, links: dict[int, Any] | None = None, empty: str = "Nothing yet.") -> str:
    """``links``: column index -> function(row) giving an href for that cell."""
    head = "".join(f"<th scope=\"col\">{escape(c.replace('_', ' '))}</th>" for c in t.columns)
    rows = []
    for row in t.rows:
        cells = []
        for i, value in enumerate(row):
            content = _cell(value)
            if links and i in links:
                content = f'<a href="{escape(links[i](row))}">{content}</a>'
            cells.append(f"<td>{content}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    body = "".join(rows) if rows else f'<tr><td colspan="{len(t.columns)}" class="muted">{escape(empty)}</td></tr>'
    return (f'<section class="table-box" id="table-{t.name}"><div class="table-head"><h3>{escape(t.caption)}</h3>'
            f'<a class="csv" href="{escape(csv_url)}" download>CSV</a></div>'
            f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div></section>')


def _stats(items: list[tuple[str, str, str]]) -> str:
    tiles = "".join(f'<div class="stat" id="stat-{key}"><dt>{escape(label)}</dt><dd>{escape(value)}</dd></div>'
                    for key, label, value in items)
    return f'<dl class="stats">{tiles}</dl>'


def report_page(r: SessionReport) -> str:
    ep = r.episode
    csv_url = f"/episodes/{ep.id}/report.csv?table="
    title = ep.title or f"Episode {ep.id}"
    length = ep.length
    messages = sum(m for _, m, _ in r.minutes)
    questions = sum(q for _, _, q in r.minutes)
    minutes_live = max(length / 60.0, 1 / 60)
    stats = _stats([
        ("peak", "Peak viewers", f"{r.peak}"),
        ("average", "Average viewers", f"{r.average:g}"),
        ("unique", "Unique viewers", f"{r.live_viewers}"),
        ("watch", "Total watch time", hours(r.watch_seconds)),
        ("chat-rate", "Chat per minute", f"{messages / minutes_live:.1f}"),
        ("questions", "Questions (answered)", f"{questions} ({r.answers})"),
        ("highlights", "Highlights", f"{len(r.highlights.rows)}"),
        ("replay-plays", "Replay plays", f"{r.replay_plays}"),
        ("replay-watch", "Replay watch time", hours(r.replay_seconds)),
    ])
    viewers = line_chart("chart-viewers", "Viewers over time",
                         [Series("viewers", r.samples, "s1")], x_max=length)
    chat = bar_chart("chart-chat", "Chat and questions per minute",
                     [Series("messages", [(s, m) for s, m, _ in r.minutes], "s1"),
                      Series("questions", [(s, q) for s, _, q in r.minutes], "s2")],
                     x_max=length, step=60.0)
    if r.retention:
        first = r.retention[0][1] or 1
        retention = line_chart("chart-retention", "Replay audience retention",
                               [Series("plays still watching", [(s, round(100.0 * p / first, 1))
                                                                for s, p in r.retention], "s3")],
                               x_max=length, y_max=100, y_suffix="%", integer=False)
    else:
        retention = '<p class="muted" id="chart-retention">No replay plays yet.</p>'
    body = (
        f'<p class="crumbs"><a href="/rooms/{quote(ep.room_slug)}/episodes">{escape(ep.room_title or ep.room_slug)}</a>'
        f' · <a href="/episodes/{ep.id}/watch">Watch the replay</a></p>'
        f'<h2 id="report-title">{escape(title)}</h2>'
        f'<p class="muted">{escape(when(ep.started_at))} · {escape(clock(length))} · {escape(ep.status)}</p>'
        f'{stats}<section class="charts">{viewers}{chat}</section>'
        + table(r.top_questions, csv_url + "top_questions", empty="No questions were asked.")
        + table(r.highlights, csv_url + "highlights", empty="No highlights were marked.")
        + f'<h3>Replay</h3><p class="muted">{r.replay_viewers} unique replay viewers.</p>'
        f'<section class="charts">{retention}</section>'
        '<details class="data"><summary>Chart data</summary>'
        + table(r.per_minute, csv_url + "per_minute") + table(r.replay_table, csv_url + "replay_retention")
        + "</details>"
    )
    return layout(f"Report: {title}", body, refresh=LIVE_REFRESH if ep.status == "live" else 0)


def operator_page(o: Overview, *, operator_email: str) -> str:
    def report(row) -> str:
        return f"/episodes/{row[0]}/report"

    live_links = {0: lambda row: f"/rooms/{quote(str(row[0]))}", 2: lambda row: f"/episodes/{row[2]}/report"}
    days = len(o.day_points)
    first = o.first_day

    def day_label(x: float) -> str:
        return (first + timedelta(days=min(int(x), days - 1))).strftime("%b %-d")

    per_day = bar_chart("chart-days", f"Unique live viewers per day, last {days} days",
                        [Series("live viewers", [(x, v) for x, v, _ in o.day_points], "s1")],
                        x_max=float(days), step=1.0, x_label=day_label)
    watch = bar_chart("chart-watch", f"Watch hours per day, last {days} days",
                      [Series("watch hours", [(x, round(h, 2)) for x, _, h in o.day_points], "s2")],
                      x_max=float(days), step=1.0, x_label=day_label, integer=False)
    body = (
        f'<h2>Operator</h2><p class="muted">Signed in as {escape(operator_email)}. '
        'Counts are cookieless and aggregated (<a href="/privacy">privacy policy</a>).</p>'
        + table(o.live, "/operator.csv?table=live_rooms", links=live_links, empty="No room is live.")
        + f'<section class="charts">{per_day}{watch}</section>'
        + table(o.sessions, "/operator.csv?table=sessions", links={0: report}, empty="No sessions yet.")
        + table(o.days, "/operator.csv?table=days")
        + '<section class="panel danger" id="delete-account-box"><h3>Delete an account on request</h3>'
        '<p class="muted">For a verified request (an under-16 report, a deletion request by mail). The same deletion '
        'as the account page; an audit row records who, when and why.</p>'
        '<form id="delete-account-form"><label>E-mail <input id="delete-email" type="email" required></label>'
        '<label>Reason <input id="delete-reason" maxlength="500" required></label>'
        '<button class="danger" id="delete-account">Delete account</button></form>'
        '<p id="delete-status" role="status"></p></section>'
    )
    return layout("Operator", body, scripts=("/static/operator.js",))


def refusal_page(status: int, message: str) -> str:
    link = ' <a href="/signin">Sign in</a>' if status == 401 else ""
    return layout("Not available", f'<div class="refusal" role="alert"><p>{escape(message)}{link}</p></div>')
