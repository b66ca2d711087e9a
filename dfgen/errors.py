"""User-facing errors: the CLI prints their message on one line and exits non-zero, no traceback."""


class DfgenError(Exception):
    """A problem with the user's input or environment, with a message that says what to do."""


class SynthesisError(DfgenError):
    """The inversion itself failed (e.g. a batch whose loss stayed non-finite after a retry)."""


def run_cli(group, prog_name: str, argv: list[str] | None, interrupted: str) -> None:
    """Run a click group so that user errors become one line on stderr and exit 1 (click usage errors
    exit 2, an interrupt 130), never a traceback. Shared by the `dfgen` and `distill` commands."""
    import sys

    import click

    try:
        group.main(args=argv, prog_name=prog_name, standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except DfgenError as exc:
        click.echo(f"Error: {one_line(exc)}", err=True)
        sys.exit(1)
    except OSError as exc:  # the file system refused a write (full, over quota, read-only, no permission)
        from dfgen.folder_guard import FILE_SYSTEM_ERRNOS, describe_os_error

        if exc.errno not in FILE_SYSTEM_ERRNOS:
            raise
        click.echo(f"Error: {describe_os_error(exc)}; rerun the same command afterwards to continue", err=True)
        sys.exit(1)
    except (KeyboardInterrupt, click.Abort):
        click.echo(interrupted, err=True)
        sys.exit(130)


def one_line(exc: BaseException) -> str:
    """The message; for an error re-raised from a DataLoader worker (its traceback is in the message), the
    original message from the traceback's last line."""
    text = str(exc).strip()
    if "Original Traceback" in text:
        last = text.splitlines()[-1]
        return last.split("Error: ", 1)[1] if "Error: " in last else last
    return text
