"""The data shipped in recipes/data: the Multi30k copy is the public data, unchanged and complete; the software
strings are whole."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "recipes" / "data" / "multi30k"

# Line count and SHA-256 of each gzipped file as published in multi30k/dataset, data/task1/raw
# (commit a3d2e0d26b56f3846f66a952536ffed4e401d05a), recorded here apart from the SHA256SUMS beside the data.
PUBLISHED = {
    "train.en.gz": (29000, "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f"),
    "train.de.gz": (29000, "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6"),
    "train.fr.gz": (29000, "622e75069e9f4c577425c4f277116ce66e63a2401c0a2312d90073cb12379a3c"),
    "train.cs.gz": (29000, "a65adb8b32e3bc664f21ecba7a6e7f6950fd1f405e135f7c312faabdb6255077"),
    "val.en.gz": (1014, "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28"),
    "val.de.gz": (1014, "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a"),
    "val.fr.gz": (1014, "ca3106f1a72390591d25f6c45cb4cd39dec4cd3f123e099748a3ce5256c160e9"),
    "val.cs.gz": (1014, "b63226e05c4bd5dd6a42897d74b86a1b9d2c31498252c572b1ea7f7996927fcc"),
    "test_2016_flickr.en.gz": (1000, "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9"),
    "test_2016_flickr.de.gz": (1000, "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8"),
    "test_2016_flickr.fr.gz": (1000, "6d326e188d259fb1d04ac19eae3af956559b3a0b93d7635e56c90987c40c8b90"),
    "test_2016_flickr.cs.gz": (1000, "200a4a74cc9560f051924abb9803be008d1908d77f747e9141aeb86dfd2797f1"),
    "test_2017_flickr.en.gz": (1000, "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074"),
    "test_2017_flickr.de.gz": (1000, "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee"),
    "test_2017_flickr.fr.gz": (1000, "3ba671ceb2299f3304ffafefea7a833d08632fbaf0ba18546f8a2ec2391af496"),
}


def test_exactly_the_published_files_are_shipped() -> None:
    assert sorted(p.name for p in DATA.glob("*.gz")) == sorted(PUBLISHED)
    assert (DATA / "README.md").is_file()


def check_file(path: Path, lines: int, sha256: str) -> None:
    """A shipped gzip file has the given SHA-256 and that many lines, the last one ended."""
    raw = path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == sha256, path
    text = gzip.decompress(raw).decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == lines, path


def checksums(directory: Path) -> dict[str, str]:
    """The file -> digest lines of directory/SHA256SUMS (the format `sha256sum -c` reads)."""
    listed = {}
    for line in (directory / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    return listed


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_file_is_unchanged(name: str) -> None:
    check_file(DATA / name, *PUBLISHED[name])


def test_checksum_file_matches() -> None:
    """SHA256SUMS (for `sha256sum -c`) lists every file with the published sum."""
    assert checksums(DATA) == {name: sha256 for name, (_, sha256) in PUBLISHED.items()}


SOFTWARE = DATA.parent / "software"
# Line count and SHA-256 of each file of the software strings (see recipes/data/software/README.md).
SOFTWARE_FILES = {
    "en-cs/train.cs.gz": (11522, "e5344847c781b7eb3eff3b5805a49a77f935dbc40712045ccd2037a34255e6d4"),
    "en-cs/train.en.gz": (11522, "b988600fb5e1450a31280453114b75635b5be736d83c6cbef05dbeb7138db8dd"),
    "en-cs/val.cs.gz": (1000, "cd2796b7c7493d07c018d7f6504d7461f4e98c62c4e8d141c6795f7b91b74c36"),
    "en-cs/val.en.gz": (1000, "780b52d9f206a89fac38811e623f8fe1dc51044ecb901aedb5e4c9546748c3cc"),
    "en-de/train.de.gz": (21870, "fc272c7201f830adc6d8b082e41d3449fc787606e0315a453ffda7bc01a67c8f"),
    "en-de/train.en.gz": (21870, "bf52512b6683ff8e57c8b22c80d8253a18c344082a2af2d63b76fa5cbab12bd7"),
    "en-de/val.de.gz": (1000, "910a6268846ccb8dd227a77067066c551bafff172847b772c0fd85e4d294fff9"),
    "en-de/val.en.gz": (1000, "703edaca58f827fb1c00dd2c2b1dc44e45d3a2d6d34a78c7c389f87bbca9b352"),
    "en-fr/train.en.gz": (19815, "01327132ef1dbe744a8906061d78163fc8ba325c54c90d50899b2df5156f6b48"),
    "en-fr/train.fr.gz": (19815, "dd64aa36f629ab055b44d36e1fdf5040457be55196be4d3522e0adf6debf99c9"),
    "en-fr/val.en.gz": (1000, "1b5dfca001ff5c14726b3ebd813b7a81e6e2151a6004f6f217425902ca1a01e3"),
    "en-fr/val.fr.gz": (1000, "cd14d40f0a558346679332e7e9e838802c75c5b5c1cd7fdb60e6e0a676124834"),
}


def test_the_software_strings_are_shipped_whole() -> None:
    assert sorted(str(p.relative_to(SOFTWARE)) for p in SOFTWARE.glob("*/*.gz")) == sorted(SOFTWARE_FILES)
    assert (SOFTWARE / "README.md").is_file()
    assert checksums(SOFTWARE) == {name: sha256 for name, (_, sha256) in SOFTWARE_FILES.items()}
    for name, (lines, sha256) in SOFTWARE_FILES.items():
        check_file(SOFTWARE / name, lines, sha256)
