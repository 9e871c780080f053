"""The compliance report: figures from the history, KPIs, gap accounting, and the table, Markdown, CSV, JSON and
HTML renderers.
"""
