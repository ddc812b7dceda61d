FROM python:3.12-slim-bookworm
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    CELERY_CONCURRENCY=4
RUN useradd --create-home --uid 1000 worker
WORKDIR /home/worker/app
COPY requirements/worker.txt requirements.txt
RUN pip install -r requirements.txt
COPY --chown=worker:worker src/ ./src/
USER worker
STOPSIGNAL SIGTERM
CMD celery --app src.tasks worker --loglevel=INFO --concurrency=$CELERY_CONCURRENCY
