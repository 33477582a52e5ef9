"""The report page: one HTML file, styles inline, charts as PNG files beside it."""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 980px;
         color: #222; line-height: 1.45; padding: 0 1rem; }
  h1 { font-size: 1.6rem; margin-bottom: .2rem; }
  h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
  .meta { color: #666; font-size: .9rem; }
  img { max-width: 100%; margin: .6rem 0; }
  table { border-collapse: collapse; margin: .6rem 0; font-size: .9rem; }
  th, td { border-bottom: 1px solid #eee; padding: .25rem .7rem; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #aaa; vertical-align: middle; }
  nav a { margin-right: 1rem; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<p class="meta">Made {{ created }} from {{ source }}. Every chart's numbers are in the CSV file linked under it.</p>
<nav>{% for s in sections %}<a href="#{{ s.anchor }}">{{ s.title }}</a>{% endfor %}</nav>
{% for s in sections %}
<h2 id="{{ s.anchor }}">{{ s.title }}</h2>
{% for b in s.blocks %}
{% for line in b.text %}
<p>{{ line }}</p>
{% endfor %}
{% if b.chart %}
<img src="{{ b.chart.file }}" alt="{{ b.chart.alt }}">
{% endif %}
{% if b.table %}
{% set t = b.table %}
<table>
<tr>{% for c in t.columns %}<th>{{ c }}</th>{% endfor %}</tr>
{% for row in t.preview %}
<tr>{% for cell in row %}{% if loop.index0 == t.swatch_column %}<td><span class="swatch" style="background: {{ cell }}"></span> {{ cell }}</td>{% elif cell is number %}<td class="num">{{ "{:,}".format(cell) if cell is integer else "%.1f"|format(cell) }}</td>{% else %}<td>{{ cell }}</td>{% endif %}{% endfor %}</tr>
{% endfor %}
</table>
<p class="meta">{% if t.rows|length > t.preview|length %}First {{ t.preview|length }} of {{ t.rows|length }} rows; all in {% else %}Data: {% endif %}<a href="{{ t.file }}">{{ t.file }}</a></p>
{% endif %}
{% endfor %}
{% endfor %}
</body>
</html>
"""
