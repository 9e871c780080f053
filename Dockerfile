# connmon container image (the full deployment, compose and hardening arrive with the dashboards issue).
# ICMP as a non-root user needs one of:
#   docker run --sysctl net.ipv4.ping_group_range="0 2147483647" ...   (unprivileged ICMP, preferred)
#   docker run --cap-add NET_RAW ... with --icmp-mode raw and the capability made ambient
FROM python:3.11-slim

WORKDIR /opt/connmon
COPY pyproject.toml README.md ./
COPY monitor ./monitor
RUN pip install --no-cache-dir . && useradd --system --uid 10001 --no-create-home connmon
COPY config /etc/connmon

USER connmon
EXPOSE 9077
HEALTHCHECK --interval=30s --timeout=5s \
  CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9077/-/healthy', timeout=3)"
ENTRYPOINT ["connmon"]
CMD ["run", "--config", "/etc/connmon/example.yaml"]
