"""The platform: ``robopt-compile serve`` (docs/PLATFORM.md), a thin layer over the library.

    app.py            the FastAPI app: routers, errors as one JSON line, the web UI's files
    auth.py           bearer tokens per request, roles, the rate limit, error statuses
    routes_models.py  /api/v1/models: upload (checked before it is kept), zoo models, tags, lineage
    routes_calibration.py  /api/v1/calibrations: int8 calibration .npz uploads, checked
    pt2check.py       a .pt2 upload loaded and exported in a child process (--trust-pt2-uploads)
    routes_jobs.py    /api/v1/jobs and /sessions: submit, events (SSE), cancel, resume, downloads
    routes_devices.py /api/v1/devices: robots running robopt-bench serve, their health
    routes_admin.py   /api/v1/me, /targets, /tokens, /webhooks, /notifications
    queue.py          the job queue in the store's ``jobs`` table: claim, cancel, resume, recover
    workers.py        --workers N slots, each job in its own process (runner.py)
    runner.py         one job: the same ``robopt_compile.api`` call as the CLI, progress mirrored
    notify.py         the notification queue: webhooks signed with HMAC-SHA256, retries, dead letter
    tokens.py         API tokens: random, shown once, stored hashed, roles viewer/operator/admin
    server.py         uvicorn + the worker pool + the notifier, one process tree
    web/              the web UI: static HTML, CSS and JS (no CDN, no build step)

Nothing here compiles, evaluates or measures by itself: jobs call ``robopt_compile.api``.
"""
