"""Monitor sources behind one contract: a registry keyed by prefix or scheme, one settings object
built from the monitor's config, typed control events; a new source is one file."""

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from PIL import Image
from test_monitor import RED, colour_classifier, config, make_video

from wildwatch.errors import UsageError
from wildwatch.monitor import sources as registry
from wildwatch.monitor.run import Monitor, MonitorConfig
from wildwatch.monitor.sources import (
    BaseSource,
    Done,
    DuplicateSourceError,
    Ended,
    Frame,
    SourceSettings,
    open_source,
    register_source,
    source_kinds,
)
from wildwatch.monitor.sources.feeds import FeedSource
from wildwatch.monitor.sources.folder import FolderSource
from wildwatch.monitor.sources.social import MastodonSource, PageSource, RedditSource, TelegramSource
from wildwatch.monitor.sources.video import VideoSource
from wildwatch.store.events import EventStore


@pytest.fixture()
def scratch_registry():
    """Kinds a test registers are gone after it."""
    source_kinds()  # the registered ones are loaded before the snapshot
    before = dict(registry._KINDS)
    yield
    registry._KINDS.clear()
    registry._KINDS.update(before)


def test_every_form_of_the_command_line_opens_its_kind(tmp_path):
    clip = make_video(tmp_path / "clip.mp4", [(RED, 0.5)])
    opened = {spec: open_source(spec) for spec in [
        str(tmp_path), str(clip), "rtsp://127.0.0.1:9/cam", "feed:http://127.0.0.1:9/f", "http://127.0.0.1:9/f.xml",
        "page:http://127.0.0.1:9/p.html", "mastodon:http://127.0.0.1:9/@seller", "reddit:http://127.0.0.1:9/r/x",
        "telegram:market", "youtube:UC123"]}
    kinds = [type(s) for s in opened.values()]
    assert kinds == [FolderSource, VideoSource, VideoSource, FeedSource, FeedSource, PageSource, MastodonSource,
                     RedditSource, TelegramSource, FeedSource]
    assert opened["rtsp://127.0.0.1:9/cam"].live and not opened["rtsp://127.0.0.1:9/cam"].finite
    assert opened[str(clip)].finite and not opened[str(tmp_path)].finite  # a folder is watched unless --once
    assert open_source(str(tmp_path), SourceSettings(once=True)).finite
    assert [k.name for k in source_kinds()] == ["page", "mastodon", "reddit", "telegram", "youtube", "feed", "stream",
                                                "folder", "video"]
    with pytest.raises(UsageError, match="not a folder, a video file"):
        open_source(str(tmp_path / "nothing"))


def test_a_prefix_or_a_name_registered_twice_is_an_error(scratch_registry):
    with pytest.raises(DuplicateSourceError, match="prefix 'feed:' is registered twice"):
        register_source("myfeed", prefixes=("feed:",))(lambda spec, settings, ctx: None)
    with pytest.raises(DuplicateSourceError, match="name 'folder'"):
        register_source("folder", prefixes=("dir:",))(lambda spec, settings, ctx: None)


def test_the_sources_settings_are_written_once_and_built_once_from_the_config(tmp_path):
    for name, f in SourceSettings.model_fields.items():  # the monitor's config holds them, with the same defaults
        assert MonitorConfig.model_fields[name].default == f.default, name
        assert MonitorConfig.model_fields[name].default_factory == f.default_factory, name
    cfg = config(tmp_path, sample_every_s=2.0, motion=4.0, keywords=["tusk"], feed_poll_s=9.0, once=True)
    settings = cfg.source_settings()
    assert settings == SourceSettings(sample_every_s=2.0, motion=4.0, keywords=["tusk"], feed_poll_s=9.0, once=True)
    clip = make_video(tmp_path / "clip.mp4", [(RED, 0.5)])
    video, feed = Monitor(cfg, colour_classifier, status=False)._open_sources([str(clip), "feed:http://x.example/f"])
    assert (video.every_s, video.motion) == (2.0, 4.0)
    assert (feed.keywords, feed.poll_s, feed.once) == (("tusk",), 9.0, True)


def test_control_events_are_typed(tmp_path):
    card = tmp_path / "card"
    card.mkdir()
    Image.new("RGB", (32, 24), RED).save(card / "a.jpg")
    (card / "b.jpg").write_bytes(b"\xff\xd8 not a photo")
    make_video(card / "c.mp4", [(RED, 1.0)])
    items = list(FolderSource(card, SourceSettings(once=True, sample_every_s=0.5)).items())
    photo, broken, *video, end = items
    assert isinstance(photo, Frame) and photo.single and photo.done_key == f"file:{(card / 'a.jpg').resolve()}"
    assert broken == Done(f"file:{(card / 'b.jpg').resolve()}", f"file:{(card / 'b.jpg').resolve()}")
    assert video and all(isinstance(f, Frame) and not f.single for f in video)
    assert end == Ended(str(card / "c.mp4"), f"file:{(card / 'c.mp4').resolve()}")  # its sightings close, it is done


COLOUR_SOURCE = '''
"""A made-up camera: one frame per colour named in the spec, a second apart."""
from PIL import Image

from wildwatch.monitor.sources import BaseSource, Ended, Frame, register_source


@register_source("colours", prefixes=("colours:",), describe="colours:RED,GREY,...")
class ColourSource(BaseSource):
    def __init__(self, spec, settings, ctx):
        super().__init__(spec, settings, ctx)
        self.colours = spec.split(":", 1)[1].split(",")

    def items(self):
        for i, colour in enumerate(self.colours):
            yield Frame(self.name, Image.new("RGB", (64, 48), colour), float(i), i)
        yield Ended(self.name)
'''


def test_a_new_source_is_one_registration(tmp_path, scratch_registry):
    """Opened by its prefix, run by the monitor: its frames make a sighting, its end closes it."""
    import importlib.util

    module = tmp_path / "colour_source.py"
    module.write_text(COLOUR_SOURCE)
    spec = importlib.util.spec_from_file_location("colour_source", module)
    spec.loader.exec_module(importlib.util.module_from_spec(spec))  # the file's @register_source runs
    store = EventStore(tmp_path / "events.db")
    stats = Monitor(config(tmp_path), colour_classifier, store=store, status=False).run(["colours:red,red,red,grey"])
    assert stats["frames"] == 4 and stats["errors"] == []
    [s] = store.list()
    assert s.species == "rhino" and s.source == "colours:red,red,red,grey" and store.open_sightings() == []
    assert isinstance(open_source("colours:red"), BaseSource)


def test_a_source_from_an_installed_package_is_one_file(tmp_path):
    """An entry point in the ``wildwatch.sources`` group names the module; ``wildwatch monitor``
    opens it by its prefix and lists its form where it names the sources it knows."""
    site = tmp_path / "site"
    info = site / "wildwatch_colours-1.0.dist-info"
    info.mkdir(parents=True)
    (site / "wildwatch_colours.py").write_text(COLOUR_SOURCE)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wildwatch-colours\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[wildwatch.sources]\ncolours = wildwatch_colours\n")
    env = {"PYTHONPATH": f"{site}:{Path(registry.__file__).parents[3]}", "PATH": "/usr/bin:/bin"}

    def monitor(*args):
        return subprocess.run([sys.executable, "-m", "wildwatch", "monitor", *map(str, args), "--db",
                               tmp_path / "events.db", "--no-status"], capture_output=True, text=True, timeout=300,
                              env=env, check=False)

    proc = monitor("colours:red,blue,grey", "--once")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1])["frames"] == 3
    unknown = monitor("nothing-here")
    assert unknown.returncode == 2 and "colours:RED,GREY,..." in unknown.stderr


def test_a_source_is_closed_when_the_run_ends(tmp_path, scratch_registry):
    closed = threading.Event()

    @register_source("once", prefixes=("once:",))
    class Once(BaseSource):
        def items(self):
            yield Frame(self.name, Image.new("RGB", (8, 8), RED), None, 0, single=True)

        def close(self):
            closed.set()

    Monitor(config(tmp_path), colour_classifier, status=False).run(["once:x"])
    assert closed.is_set()
