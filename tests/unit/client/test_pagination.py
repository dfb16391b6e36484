"""Pages and the iterators that follow ``next_cursor``."""

from __future__ import annotations

from .conftest import answer, job, query


def pages(total: int, size: int, build):
    """A route that serves ``total`` items ``size`` at a time, cursor = offset."""
    def serve(request):
        q = query(request)
        start = int(q.get("cursor", "0"))
        end = min(total, start + int(q.get("limit", "20")))
        return answer(200, {"items": [build(i) for i in range(start, end)],
                            "next_cursor": str(end) if end < total else None})
    return serve


def test_iter_jobs_follows_the_cursors_to_the_last_page(api, client):
    api.answer_with("GET", "/v1/generations",
                    pages(5, 2, lambda i: job(f"job-{i}", "succeeded")))
    jobs = list(client.iter_jobs(status="succeeded", page_size=2))
    assert [j.id for j in jobs] == [f"job-{i}" for i in range(5)]
    assert all(j.done for j in jobs)
    asked = [query(r) for r in api.calls("GET", "/v1/generations")]
    assert asked == [{"status": "succeeded", "limit": "2"},
                     {"status": "succeeded", "limit": "2", "cursor": "2"},
                     {"status": "succeeded", "limit": "2", "cursor": "4"}]


def test_one_page_and_an_empty_list(api, client):
    api.answer_with("GET", "/v1/generations", answer(200, {"items": [job()],
                                                           "next_cursor": "abc"}))
    page = client.list_jobs(limit=1)
    assert ([j.id for j in page.items], page.next_cursor) == ([job()["id"]], "abc")
    api.answer_with("GET", "/v1/images", answer(200, {"items": [], "next_cursor": None}))
    assert list(client.iter_gallery(kind="output")) == []
    assert query(api.calls("GET", "/v1/images")[0]) == {"kind": "output"}


def test_iter_gallery_and_deliveries_are_typed(api, client):
    api.answer_with("GET", "/v1/images", pages(3, 2, lambda i: {
        "id": f"img-{i}", "kind": "output", "job_id": "j1", "url": f"http://x/{i}",
        "created_at": "2026-12-03T18:00:00+00:00"}))
    images = list(client.iter_gallery(kind="output", job_id="j1", page_size=2))
    assert [(i.id, i.kind, i.created_at.tzinfo is not None) for i in images] == \
        [(f"img-{i}", "output", True) for i in range(3)]
    api.answer_with("GET", "/v1/generations/j1/webhook-deliveries", pages(1, 5, lambda i: {
        "id": "msg_1", "job_id": "j1", "job_attempt": 1, "event": "completed",
        "url": "https://hooks.example/x", "status": "delivered", "attempts": 1,
        "response_status": 204, "last_error": None, "created_at": "2026-12-03T18:00:00+00:00",
        "last_attempt_at": None, "next_attempt_at": None,
        "delivered_at": "2026-12-03T18:00:01+00:00"}))
    [delivery] = client.iter_deliveries("j1")
    assert (delivery.id, delivery.status, delivery.response_status) == ("msg_1", "delivered", 204)
    assert delivery.delivered_at.second == 1
