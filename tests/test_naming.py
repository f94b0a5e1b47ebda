"""The one video-key rule per layout (``util.naming.VIDEO_KEYS``)."""
from fsvfm.util.naming import VIDEO_KEYS, fas_video_key, frame_video_key


def test_frames_layout_groups_by_folder_and_name_before_frame():
    key = VIDEO_KEYS["frames"]
    assert key is frame_video_key
    assert key("/d/test/fake/000_003_frame_12.png", "/d/test") == "fake/000_003"
    assert key("/d/test/real/000_003_frame_0.png", "/d/test") == "real/000_003"  # same name, other folder
    assert key("/d/a/photo.jpg") == "/d/a/photo.jpg"                               # no _frame_: its own video


def test_fas_layout_drops_the_frame_suffix():
    assert VIDEO_KEYS["fas"] is fas_video_key
    assert fas_video_key("casia/test/real/1_1_frame0.png") == fas_video_key("casia/test/real/1_1_frame1.png") \
        == "casia/test/real/1_1_"
