"""Text from the host, made safe for a terminal: control characters shown, never obeyed.

    print(visible(log_text))          # ESC [2J  ->  \\x1b[2J   (tabs and newlines kept: layout)
    print(visible(file_name, ""))     # a name is one line: its newline shows as \\n too
    info = visible_tree(json.loads(text))   # every string (and key) of a JSON document
    ... | python3 trainer/results/visible.py  # the same as a filter (the host's follow_log.sh)

A log line, a file name or a field of a JSON file written on the host could otherwise clear
the screen, retitle the window, or write an escape sequence into the laptop's terminal. C0 and
C1 controls, DEL and the Unicode bidirectional overrides (which reorder what is shown) are
written as Python escapes. Standard library only: the host's system python3 runs it as a filter.
"""

import re
import sys

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")  # 2028/9: line breaks to Python


_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char):
    code = ord(char)
    return _NAMED.get(char) or (f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")


def visible(text, layout="\n\t"):
    """`text` with every control character but those in `layout` written as an escape (ESC as \\x1b)."""
    text = str(text)
    return _CONTROL.sub(lambda m: m.group() if m.group() in layout else _escape(m.group()), text)


def visible_tree(value, layout="\n\t"):
    """A JSON-like value with `visible` applied to every string in it, dict keys included."""
    if isinstance(value, str):
        return visible(value, layout)
    if isinstance(value, dict):
        return {visible_tree(k, layout): visible_tree(v, layout) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(visible_tree(v, layout) for v in value)
    return value


class VisibleStream:
    """A text stream that writes `visible` text to `stream`; a terminal's CR LF (from a remote pty) is one newline.

        conn.run(cmd, pty=True, out_stream=VisibleStream(sys.stdout))
    """

    def __init__(self, stream):
        self.stream, self._cr = stream, False

    def write(self, text):
        written = len(text)
        if self._cr:
            text = "\r" + text
        self._cr = text.endswith("\r")  # its LF may come with the next chunk
        if self._cr:
            text = text[:-1]
        self.stream.write(visible(text.replace("\r\n", "\n")))
        return written

    def flush(self):
        self.stream.flush()

    def isatty(self):
        return False


def main():
    """stdin to stdout, line by line as it arrives (bytes: a broken UTF-8 sequence shows as U+FFFD)."""
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        out.write(visible(line.decode("utf-8", "replace")).encode("utf-8"))
        out.flush()


if __name__ == "__main__":
    try:
        main()
    except (BrokenPipeError, KeyboardInterrupt):
        pass
