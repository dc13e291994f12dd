"""The HTML pages, as Jinja2 templates kept in Python strings (nothing to package, no build step).

Autoescaping is on: prompt and answer texts are shown as text, never as markup. The only script
is the inline keyboard handler, allowed by a per-response CSP nonce.
"""

from __future__ import annotations

import jinja2

from modalign.feedback.server.admin_templates import ADMIN, ADMIN_TASK, DISAGREEMENTS, JUDGMENTS, MOVES, TOKEN

# Colours as variables, light by default; dark when the system prefers it (unless the reader chose light
# with the header's toggle, kept in localStorage) or when they chose dark.
LIGHT = {"bg": "#f6f6f4", "fg": "#1d1d1f", "card": "#fff", "line": "#ddd", "muted": "#555", "head": "#24292f",
         "err-bg": "#fde8e8", "err-line": "#e0a0a0", "note-bg": "#e8f1fd", "note-line": "#a0bde0", "kbd": "#fafafa",
         "code": "#eee", "current": "#eef5ff", "accent": "#0969da", "link": "#0550ae"}
DARK = {"bg": "#0d1117", "fg": "#e6edf3", "card": "#161b22", "line": "#30363d", "muted": "#9da7b3", "head": "#010409",
        "err-bg": "#3d1d1d", "err-line": "#8b3a3a", "note-bg": "#132339", "note-line": "#2f5a8a", "kbd": "#21262d",
        "code": "#262c36", "current": "#14263f", "accent": "#4493f8", "link": "#79b8ff"}


def _variables(colours: dict[str, str], scheme: str) -> str:
    return "".join(f"--{name}:{value};" for name, value in colours.items()) + f"color-scheme:{scheme}"


STYLE = (":root{" + _variables(LIGHT, "light") + "}"
         "@media (prefers-color-scheme: dark){:root:not([data-theme=light]){" + _variables(DARK, "dark") + "}}"
         ":root[data-theme=dark]{" + _variables(DARK, "dark") + "}" + """
body{font:15px/1.45 system-ui,sans-serif;margin:0;color:var(--fg);background:var(--bg)}
a{color:var(--link)}
header{display:flex;gap:1em;align-items:center;padding:.5em 1em;background:var(--head);color:#fff;flex-wrap:wrap}
header .right{margin-left:auto;display:flex;gap:.6em;align-items:center}header a{color:#fff}
main{max-width:1100px;margin:1em auto;padding:0 1em}
.card{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:.8em 1em;margin:.6em 0}
.cols{display:grid;grid-template-columns:repeat(auto-fit,minmax(280px,1fr));gap:.8em}
.answer{white-space:pre-wrap}.label{font-weight:600;color:var(--muted)}
.error{background:var(--err-bg);border:1px solid var(--err-line);padding:.6em 1em;border-radius:6px}
.notice{background:var(--note-bg);border:1px solid var(--note-line);padding:.6em 1em;border-radius:6px}
.media img{height:192px;image-rendering:pixelated;cursor:zoom-in;border:1px solid var(--line);background:#fff}
.media img.zoomed{position:fixed;inset:0;width:100vw;height:100vh;object-fit:contain;background:rgba(0,0,0,.85);
  z-index:10;cursor:zoom-out;border:0}
fieldset{border:1px solid var(--line);border-radius:6px}fieldset.current{border-color:var(--accent);background:var(--current)}
kbd{border:1px solid #bbb;border-bottom-width:2px;border-radius:3px;padding:0 .3em;font-size:.85em;background:var(--kbd)}
textarea,input[type=text],input[type=number],select{font:inherit;color:var(--fg);background:var(--card);border:1px solid var(--line)}
textarea{width:100%;min-height:8em}input[type=text]{width:100%}
#help{position:fixed;right:1em;bottom:1em;max-width:380px;z-index:5;box-shadow:0 2px 12px rgba(0,0,0,.2)}
table{border-collapse:collapse;background:var(--card)}td,th{border:1px solid var(--line);padding:.3em .6em;text-align:left;vertical-align:top}
.version{font-family:monospace;background:var(--code);padding:0 .3em;border-radius:3px}
form.inline{display:inline}.split{color:#d1242f;font-weight:600}
""")

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{{ title }} · modalign annotate</title><style>{{ style }}</style>
<script nonce="{{ nonce }}">{% include "theme" %}</script></head>
<body><header><b>modalign annotate</b>
{% if account %}<span id="who">{{ account.name }}{% if account.is_admin and not account.name.startswith("(") %} (admin){% endif %}</span>
{% if progress %}<span id="progress">{{ progress.done }} of {{ progress.total }} done</span>{% endif %}
<a href="/guidelines" id="guidelines-link">guidelines</a><a href="/recent" id="recent-link">recent answers</a>
{% if account.is_admin %}<a href="/admin">dashboard</a>{% endif %}{% endif %}
<span class="right"><button type="button" id="theme-toggle" title="switch between light and dark">◐ theme</button>
{% if account %}<form method="post" action="/logout"><button type="submit">log out</button></form>{% endif %}</span>
</header><main>{% block main %}{% endblock %}</main></body></html>"""

# Runs in <head> so the saved theme applies before the first paint; the button is wired once the page is read.
THEME = """(function () {
  const root = document.documentElement, saved = localStorage.getItem("modalign-theme");
  if (saved === "dark" || saved === "light") root.dataset.theme = saved;
  document.addEventListener("DOMContentLoaded", () => {
    const button = document.getElementById("theme-toggle");
    button.addEventListener("click", () => {
      const dark = root.dataset.theme ? root.dataset.theme === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
      root.dataset.theme = dark ? "light" : "dark";
      localStorage.setItem("modalign-theme", root.dataset.theme);
    });
  });
})();"""

LOGIN = """{% extends "base" %}{% block main %}
<h1>Log in</h1>
{% if error %}<p class="error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="/login" class="card">
<label for="token">Your access token</label>
<input type="password" id="token" name="token" autocomplete="current-password" autofocus required>
<p><button type="submit">Log in</button></p></form>{% endblock %}"""

MESSAGE = """{% extends "base" %}{% block main %}
<h1>{{ title }}</h1><p class="{{ css or 'notice' }}" role="alert">{{ message }}</p>
<p><a href="/next">Go to my next task</a></p>{% endblock %}"""

TASK = """{% extends "base" %}{% block main %}
<h1>Task {{ task.id }} <small>({{ task.kind }})</small></h1>
{% if error %}<p class="error" role="alert" id="error">{{ error }}</p>{% endif %}
{% if last %}<p><form method="post" action="/tasks/{{ last.task_id }}/undo" class="inline" id="undo-last">
<button type="submit">↶ Undo your last answer (task {{ last.task_id }}) <kbd>u</kbd></button></form>
· <a href="/recent">recent answers</a></p>{% endif %}
<details class="card" id="guidelines"{% if guideline_open %} open{% endif %}><summary>Guidelines <span class="version">{{ guideline.version }}</span>
{% if guideline_open %}<small>(new for you: shown once, then here and under “guidelines” above)</small>{% endif %}</summary>
{% for paragraph in guideline.text.split("\n\n") %}<p>{{ paragraph }}</p>{% endfor %}</details>
<section class="card" id="prompt">{% for message in prompt %}
<p><span class="label">{{ message.role }}:</span> {{ message.text }}</p>{% endfor %}
<div class="media">{% for item in media %}{% if item.kind == "image" %}
<img src="{{ item.url }}" alt="image {{ loop.index }} of the example" title="click to zoom">
{% else %}<audio controls preload="metadata" src="{{ item.url }}"></audio>{% endif %}{% endfor %}</div></section>
{% if status == "done" and not editing %}<p class="notice" id="answered">You have answered this task{% if mine %}:
<b id="my-answer">{{ mine }}</b>{% endif %}. <a href="/next">Next task</a></p>
{% if mine %}<p id="change"><a href="/tasks/{{ task.id }}?edit=1" id="edit-link">Change this answer</a> ·
<form method="post" action="/tasks/{{ task.id }}/undo" class="inline"><button type="submit" id="undo">Undo this answer</button></form></p>{% endif %}
{% elif status == "skipped" %}<p class="notice" id="set-aside">You set this task aside. <a href="/next">Next task</a></p>
{% if unskip %}<form method="post" action="/tasks/{{ task.id }}/unskip"><button type="submit" id="unskip">Undo: answer it after all</button></form>{% endif %}
{% elif status is none %}<p class="notice">Viewing as admin: this task is not assigned to you.</p>
{% else %}
{% if editing %}<p class="notice" id="editing">Changing your answer ({{ mine }}). The old one is kept in the history.</p>{% endif %}
<form method="post" action="/tasks/{{ task.id }}{% if editing %}/edit{% endif %}" id="answer" data-kind="{{ task.kind }}">
<input type="hidden" name="guideline_version" value="{{ guideline.version }}">
{% include task.kind %}
<p><button type="submit">{% if editing %}Save the change{% else %}Submit{% endif %} <kbd>Enter</kbd></button> · <kbd>?</kbd> shortcuts</p></form>
{% if not editing %}<details class="card" id="skip"><summary>Skip or flag this task <kbd>s</kbd></summary>
<form method="post" action="/tasks/{{ task.id }}/skip" id="skip-form">
{% for value, (action, text) in reasons.items() %}<label><input type="radio" name="reason" value="{{ value }}"
{% if values.get("reason") == value %}checked{% endif %}> {{ text }}</label><br>{% endfor %}
<label for="note">Note (optional; needed for “another problem”)</label>
<input type="text" id="note" name="note" maxlength="2000" value="{{ values.note or '' }}">
<p><button type="submit" id="skip-submit">Set this task aside</button> It leaves your queue and is never used for training.</p>
</form></details>{% endif %}
<div id="help" class="card" hidden><b>Keyboard shortcuts</b><ul>{% include "help_" + task.kind %}
<li><kbd>Enter</kbd> submit (in a text box: <kbd>Ctrl</kbd>+<kbd>Enter</kbd>; <kbd>Esc</kbd> leaves it)</li>
<li><kbd>s</kbd> skip or flag · <kbd>u</kbd> undo your last answer</li>
<li><kbd>?</kbd> show / hide this help</li></ul></div>
<script nonce="{{ nonce }}">{% include "script" %}</script>{% endif %}
{% endblock %}"""

PAIRWISE = """<div class="cols">{% for cid, text in task.candidates %}
<div class="card"><div class="label">{{ "AB"[loop.index0] }}</div><div class="answer" id="answer-{{ "ab"[loop.index0] }}">{{ text }}</div></div>
{% endfor %}</div>
<fieldset><legend>Which answer is better?</legend>
{% for value, text in [("a", "A is better"), ("b", "B is better"), ("tie", "Tie")] %}
<label><input type="radio" name="choice" value="{{ value }}" {% if values.get("choice") == value %}checked{% endif %}>
<kbd>{{ loop.index }}</kbd> {{ text }}</label>{% endfor %}</fieldset>
<fieldset id="strength"><legend>How clear is the difference? (optional)</legend>
{% for value in strengths %}<label><input type="radio" name="strength" value="{{ value }}"
{% if values.get("strength") == value %}checked{% endif %}> <kbd>{{ loop.index + 3 }}</kbd> {{ value }}</label>
{% endfor %}</fieldset>
<p><label for="reason">Reason (optional, <kbd>r</kbd>)</label>
<input type="text" id="reason" name="reason" value="{{ values.reason or '' }}" maxlength="2000"></p>"""

RANKING = """<div class="cols">{% for cid, text in task.candidates %}
<div class="card"><div class="label">{{ loop.index }}</div><div class="answer">{{ text }}</div></div>{% endfor %}</div>
<p><label for="ranking">Your ranking, best first (answer numbers, e.g. 2,1,3):</label>
<input type="text" id="ranking" name="ranking" value="{{ values.ranking or '' }}" autocomplete="off"></p>
<p>Order so far: <span id="order">{{ values.ranking or "(none yet)" }}</span></p>"""

RATING = """<div class="card"><div class="answer" id="rated">{{ task.candidates[0][1] }}</div></div>
{% for axis in task.settings.axes %}<fieldset class="axis"><legend>{{ axis }}</legend>
{% for point in range(1, task.settings.scale + 1) %}<label><input type="radio" name="rating.{{ axis }}" value="{{ point }}"
{% if values.get("rating." + axis) == point|string %}checked{% endif %}> {{ point }}</label>
{% endfor %}</fieldset>{% endfor %}"""

CRITIQUE = """<div class="card"><div class="label">Answer</div><div class="answer" id="original">{{ task.candidates[0][1] }}</div></div>
<p><label for="corrected_text">Corrected answer (<kbd>e</kbd> to edit)</label>
<textarea id="corrected_text" name="corrected_text">
{{ values.get("corrected_text", task.candidates[0][1]) }}</textarea></p>
<p><label for="critique">What was wrong (optional)</label>
<input type="text" id="critique" name="critique" value="{{ values.critique or '' }}"></p>"""

HELP = {
    "help_pairwise": "<li><kbd>1</kbd> A better · <kbd>2</kbd> B better · <kbd>3</kbd> tie</li>"
                     "<li><kbd>4</kbd> slight · <kbd>5</kbd> clear · <kbd>6</kbd> strong difference</li><li><kbd>r</kbd> reason</li>",
    "help_ranking": "<li>digits: add that answer to the ranking, best first</li><li><kbd>Backspace</kbd> undo</li>",
    "help_rating": "<li>digits: rate the highlighted axis, then move to the next</li>"
                   "<li><kbd>↑</kbd>/<kbd>↓</kbd> change axis</li>",
    "help_critique": "<li><kbd>e</kbd> edit the answer</li>",
}

SCRIPT = """(function () {
  const form = document.getElementById("answer"), kind = form.dataset.kind, help = document.getElementById("help");
  const axes = Array.from(form.querySelectorAll("fieldset.axis")), order = [];
  const skipPanel = document.getElementById("skip"), skip = document.getElementById("skip-form");
  const undoLast = document.getElementById("undo-last");
  let axis = 0;
  const markAxis = () => axes.forEach((f, i) => f.classList.toggle("current", i === axis));
  const showOrder = () => {
    document.getElementById("ranking").value = order.join(",");
    document.getElementById("order").textContent = order.length ? order.join(" > ") : "(none yet)";
  };
  markAxis();
  document.querySelectorAll(".media img").forEach(img => img.addEventListener("click", () => img.classList.toggle("zoomed")));
  const keys = {
    pairwise(e) {
      const value = {"1": "a", "2": "b", "3": "tie"}[e.key];
      if (value) { form.querySelector('input[name=choice][value="' + value + '"]').checked = true; return true; }
      const strength = {"4": "slight", "5": "clear", "6": "strong"}[e.key];
      if (strength) { form.querySelector('input[name=strength][value="' + strength + '"]').checked = true; return true; }
      if (e.key === "r") { document.getElementById("reason").focus(); return true; }
    },
    ranking(e) {
      const n = Number(e.key), count = form.querySelectorAll(".cols .card").length;
      if (n >= 1 && n <= count && !order.includes(n)) { order.push(n); showOrder(); return true; }
      if (e.key === "Backspace") { order.pop(); showOrder(); return true; }
    },
    rating(e) {
      const point = axes[axis] && axes[axis].querySelector('input[value="' + e.key + '"]');
      if (point) { point.checked = true; axis = Math.min(axis + 1, axes.length - 1); markAxis(); return true; }
      if (e.key === "ArrowDown" || e.key === "ArrowUp") {
        axis = Math.max(0, Math.min(axes.length - 1, axis + (e.key === "ArrowDown" ? 1 : -1))); markAxis(); return true;
      }
    },
    critique(e) { if (e.key === "e") { document.getElementById("corrected_text").focus(); return true; } },
  };
  document.addEventListener("keydown", e => {
    const t = e.target, tag = t.tagName;
    const typing = tag === "TEXTAREA" || (tag === "INPUT" && !["radio", "checkbox", "hidden"].includes(t.type));
    if (typing) {
      if (e.key === "Enter" && (tag === "INPUT" || e.ctrlKey || e.metaKey)) { e.preventDefault(); (t.form || form).requestSubmit(); }
      else if (e.key === "Escape") t.blur();
      return;
    }
    if (e.altKey || e.ctrlKey || e.metaKey || (tag === "BUTTON" && t.form !== form)) return;
    if (e.key === "?") { help.hidden = !help.hidden; e.preventDefault(); return; }
    if (e.key === "Escape") { help.hidden = true; document.querySelectorAll(".zoomed").forEach(i => i.classList.remove("zoomed")); return; }
    if (e.key === "Enter") { e.preventDefault(); (t.form === skip ? skip : form).requestSubmit(); return; }
    if (e.key === "s" && skipPanel) { skipPanel.open = true; skipPanel.querySelector("input").focus(); e.preventDefault(); return; }
    if (e.key === "u" && undoLast) { undoLast.requestSubmit(); e.preventDefault(); return; }
    if (keys[kind](e)) e.preventDefault();
  });
})();"""

DONE = """{% extends "base" %}{% block main %}
<h1>All done</h1><p class="notice" id="all-done">You have finished all {{ progress.total }} of your tasks. Thank you!</p>
{% if last %}<form method="post" action="/tasks/{{ last.task_id }}/undo" id="undo-last">
<button type="submit">↶ Undo your last answer (task {{ last.task_id }})</button></form>{% endif %}
{% endblock %}"""

RECENT = """{% extends "base" %}{% block main %}
<h1>Recent answers</h1>
{% if changed %}<p class="notice" id="changed">Your answer to task {{ changed }} was changed.</p>{% endif %}
<p>Your last {{ policy.last }} answers of the last {{ (policy.window.total_seconds() // 60)|int }} minutes can be
undone (the task goes back to your queue) or changed. Older ones: ask an admin.</p>
{% if answers %}<table id="recent"><tr><th>task</th><th>kind</th><th>your answer</th><th>at (UTC)</th><th></th></tr>
{% for answer, text in answers %}<tr><td><a href="/tasks/{{ answer.task_id }}">{{ answer.task_id }}</a></td><td>{{ answer.kind }}</td>
<td>{{ text }}</td><td>{{ answer.created_at.strftime("%H:%M:%S") }}</td>
<td><a href="/tasks/{{ answer.task_id }}?edit=1">change</a>
<form method="post" action="/tasks/{{ answer.task_id }}/undo" class="inline"><button type="submit">undo</button></form></td></tr>
{% endfor %}</table>{% else %}<p id="none">No answers that can still be changed.</p>{% endif %}
{% if skips %}<h2>Set aside</h2><table id="recent-skips"><tr><th>task</th><th>why</th><th>note</th><th></th></tr>
{% for row in skips %}<tr><td>{{ row.task_id }}</td><td>{{ reasons[row.reason][1] }}</td><td>{{ row.note }}</td>
<td><form method="post" action="/tasks/{{ row.task_id }}/unskip" class="inline"><button type="submit">undo</button></form></td></tr>
{% endfor %}</table>{% endif %}
<p><a href="/next">Go to my next task</a></p>{% endblock %}"""

GUIDELINES = """{% extends "base" %}{% block main %}
<h1>Guidelines</h1>{% for kind, guideline in guidelines %}
<section class="card" id="guideline-{{ kind }}"><h2>{{ kind }} <span class="version">{{ guideline.version }}</span></h2>
{% for paragraph in guideline.text.split("\n\n") %}<p>{{ paragraph }}</p>{% endfor %}</section>{% endfor %}
{% endblock %}"""

TEMPLATES = {"base": BASE, "login": LOGIN, "message": MESSAGE, "task": TASK, "pairwise": PAIRWISE,
             "ranking": RANKING, "rating": RATING, "critique": CRITIQUE, "script": SCRIPT, "done": DONE,
             "admin": ADMIN, "theme": THEME, "recent": RECENT, "guidelines": GUIDELINES, "disagreements": DISAGREEMENTS,
             "admin_task": ADMIN_TASK, "judgments": JUDGMENTS, "token": TOKEN, "moves": MOVES, **HELP}

environment = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True)


def render(name: str, **context: object) -> str:
    """Render a page; `style` and the defaults every page expects are filled in here."""
    context = {"account": None, "progress": None, "error": None, "values": {}, "style": STYLE, **context}
    return environment.get_template(name).render(**context)
