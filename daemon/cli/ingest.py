"""`dreamctl ingest`: drop conversation logs into the inbox, and optionally ingest them now."""

from __future__ import annotations

from pathlib import Path

import click

from dreamd.daemon.cli.common import ConfigProblem, echo_json, json_option


class BarProgress:
    """The ingest progress as a click bar on stderr (stdout stays clean for --json)."""

    def __init__(self):
        self.bar = None

    def start(self, files: int) -> None:
        self.bar = click.progressbar(length=max(files, 1), label="ingesting", file=click.get_text_stream("stderr"),
                                     show_pos=True)
        self.bar.__enter__()

    def working_on(self, what: str) -> None:
        pass

    def advance(self, files: int, messages: int = 0) -> None:
        self.bar.update(files)

    def finish(self, report) -> None:
        self.bar.__exit__(None, None, None)


@click.command("ingest")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--now", is_flag=True, help="Also ingest the inbox in this process, with a progress bar, "
                                          "instead of leaving it to the running daemon.")
@json_option
@click.pass_obj
def ingest_cmd(obj, files: tuple[Path, ...], now: bool, as_json: bool):
    """Drop conversation log FILES into the inbox (copied into inbox/tmp/, then renamed into
    inbox/new/, so the daemon never sees half a file)."""
    from dreamd.memory_graph.inbox import DropError, Inbox

    config = obj.config()
    layout = obj.layout().ensure()
    inbox = Inbox(layout.inbox, config.inbox)
    dropped, failed = [], []
    for path in files:  # one file that cannot be dropped (a FIFO, a full disk) does not stop the rest
        try:
            dropped.append(inbox.drop(path))
        except DropError as exc:
            failed.append(str(exc))
            click.echo(f"error: {exc}", err=True)
    if failed and not dropped:
        raise click.ClickException(f"nothing dropped ({len(failed)} failed)")
    result: dict = {"dropped": [str(p) for p in dropped], "failed": failed}
    if now:
        from dreamd.memory_graph.embedder import Embedder, EmbedderLoadError  # torch: imported only when needed
        from dreamd.memory_graph.ingest import DiskFull, Ingester

        try:
            embedder = Embedder(config.embedder)
        except EmbedderLoadError as exc:
            raise ConfigProblem(exc) from None
        ingester = Ingester(layout.inbox, layout.database, embedder, config.inbox, config.graph)
        try:
            report = ingester.drain(progress=None if as_json else BarProgress(),
                                    trusted=frozenset(p.name for p in dropped))
        except DiskFull as exc:
            raise click.ClickException(f"{exc}; the dropped files wait in the inbox") from None
        result.update({k: v for k, v in report.to_dict().items() if k != "outcomes"})
        result["files_detail"] = report.outcomes
        result["graph"] = ingester.graph.stats()
    if as_json:
        echo_json(result)
    else:
        for path in dropped:
            click.echo(f"dropped {path}")
        if now:
            for outcome in result["files_detail"]:
                detail = {k: v for k, v in outcome.items() if k not in ("file", "status")}
                click.echo(f"{outcome['status']:<12} {outcome['file']}  {detail}")
            click.echo(f"messages {result['messages']} (duplicates {result['duplicate_messages']}), "
                       f"memories {result['nodes']}, edges {result['edges']}, in {result['seconds']:.1f} s")
    if failed:
        raise SystemExit(1)  # some files were not dropped: said above, on stderr
