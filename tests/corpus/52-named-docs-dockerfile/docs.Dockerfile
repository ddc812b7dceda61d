# syntax=docker/dockerfile:1
FROM python:3.12-alpine AS docs
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install mkdocs-material==9.5.17
WORKDIR /docs
COPY mkdocs.yml ./
COPY docs/ ./docs/
RUN mkdocs build --strict --site-dir /site

FROM nginxinc/nginx-unprivileged:1.25-alpine
COPY --from=docs --chown=101:101 /site /usr/share/nginx/html
EXPOSE 8080
USER 101
