"""A fully cached rebuild writes the very same image (same config, same manifest digest).

Docker's classic builder and BuildKit both give the same image ID for a rebuild that hits the
cache for every step; a tag pointing at a new ID after a no-op rebuild would make every CI run
push "new" images.  The image's `created` and the history times therefore come from when the
content was made (the cache records), never from the time of the rebuild.
"""

from __future__ import annotations

import json
import time


def _build(cli, ctx, *extra):
    return cli("build", "-q", *extra, str(ctx), check=True).stdout.strip()


def test_cached_rebuild_gives_the_same_image_and_a_change_a_new_one(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "a.txt").write_text("one\n")
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo built > /b\nCOPY a.txt /a\nENV X=1\n"
                                    "CMD [\"cat\", \"/a\"]\n")
    first = _build(cli, ctx, "-t", "same:1")
    time.sleep(1.1)  # a rebuild in a later second must still give the same bytes
    assert _build(cli, ctx, "-t", "same:1") == first
    (ctx / "a.txt").write_text("two\n")
    time.sleep(1.1)
    changed = _build(cli, ctx, "-t", "same:1")
    assert changed != first
    created = json.loads(cli("inspect", "same:1", check=True).stdout)[0]["Created"]
    assert created.endswith("Z") and created > "2020"  # the COPY's record time, not empty
    assert cli("images", check=True).stdout.count("same") == 1


def test_metadata_only_change_keeps_content_time(cli, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\nLABEL v=1\n")
    a = _build(cli, ctx)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\nLABEL v=2\n")
    b = _build(cli, ctx)
    (ctx / "Dockerfile").write_text("FROM busybox\nRUN echo x > /x\nLABEL v=1\n")
    time.sleep(1.1)
    assert _build(cli, ctx) == a != b
