"""The handler naming rule of BaseTask, and classes refused for ambiguity."""

from __future__ import annotations

import pytest

from yptask import BaseTask, handles
from yptask.errors import ConfigError
from yptask.tasks.base import handler_names


class Photos(BaseTask):
    def handle_photos_upload(self, msg):
        return "upload"

    def handle_echo(self, msg):
        return "echo"

    @handles("legacy.PhotoDeleted", "other.app-name.deleted")
    def deleted(self, msg):
        return "deleted"


@pytest.mark.parametrize(("name", "method"), [
    ("upai.photos.upload", "handle_photos_upload"),  # application prefix dropped
    ("photos.upload", "handle_photos_upload"),  # whole name
    ("echo", "handle_echo"),
    ("any.echo", "handle_echo"),
    ("legacy.PhotoDeleted", "deleted"),
    ("other.app-name.deleted", "deleted"),
    ("upai.photos.delete", None),
    ("a.b.photos.upload", None),  # only the first segment may be dropped
    ("photos", None),
])
def test_message_names_resolve_to_methods(name, method):
    assert Photos.handler_for(name) == method


def test_handled_lists_explicit_names_and_handle_methods():
    assert Photos.handled() == ["legacy.PhotoDeleted", "other.app-name.deleted",
                                "handle_echo", "handle_photos_upload"]


def test_handler_names_follow_the_rule():
    assert handler_names("upai.photos.upload") == ("photos_upload", "upai_photos_upload")
    assert handler_names("echo") == ("echo",)


def test_whole_name_and_dropped_prefix_methods_together_are_refused():
    with pytest.raises(ConfigError, match=r"'upai\.photos\.upload' would match both"):
        class Ambiguous(BaseTask):
            def handle_photos_upload(self, msg): ...

            def handle_upai_photos_upload(self, msg): ...


def test_explicit_name_clashing_with_a_named_handler_is_refused():
    with pytest.raises(ConfigError, match="bound to on_upload"):
        class Clash(BaseTask):
            def handle_photos_upload(self, msg): ...

            @handles("upai.photos.upload")
            def on_upload(self, msg): ...


def test_one_name_bound_to_two_methods_is_refused():
    with pytest.raises(ConfigError, match="bound to both"):
        class Twice(BaseTask):
            @handles("x.y")
            def one(self, msg): ...

            @handles("x.y")
            def two(self, msg): ...


def test_handles_needs_a_name():
    with pytest.raises(ConfigError):
        handles()


def test_subclass_inherits_and_extends_handlers():
    class More(Photos):
        def handle_photos_delete(self, msg):
            return "delete"

    assert More.handler_for("upai.photos.delete") == "handle_photos_delete"
    assert More.handler_for("upai.photos.upload") == "handle_photos_upload"
    assert Photos.handler_for("upai.photos.delete") is None


def test_instances_carry_settings_and_a_logger_named_after_the_task():
    task = Photos({"k": 1}, task_name="photos")
    assert task.settings == {"k": 1}
    assert task.logger.name == "yptask.tasks.photos"
    assert task.message is None
