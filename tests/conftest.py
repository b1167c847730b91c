"""Shared fixtures. Media files are made once per session: MediaPipe runs cost seconds each."""
import pytest

from tests.helpers import make_corpus
from tests.media import make_person_video


@pytest.fixture(scope="session")
def person_video(tmp_path_factory):
    """30 frames at 15 fps of a real person (messi5.jpg, moving gently), 640x360 mp4v."""
    return make_person_video(tmp_path_factory.mktemp("media") / "person.mp4", n_frames=30, fps=15)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """tests.helpers' tiny corpus as a cache, made once per test module that asks for it (modules
    that need another corpus define their own `corpus`)."""
    return make_corpus(tmp_path_factory.mktemp("corpus") / "cache")
