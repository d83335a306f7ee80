"""The step log of one postback: the original system's lines, kept for the people who read them.

When the partner has `enable_logging` (and INFO is logged), each postback's steps are
collected here and written as one log record, one line a step, when it ends: cheap on
the hot path, and one entry per postback in structured logs. The pipeline and the store
say which step they reached; the words are all here.
"""

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from conversions.outcomes import Outcome

if TYPE_CHECKING:
    from partners.models import Partner

logger = logging.getLogger("conversions.ingest")


class StepLog:
    """The steps of one postback so far; `StepLog.start` gives None when the partner logs none."""

    __slots__ = ("lines",)

    def __init__(self, lines: list[str]):
        self.lines = lines

    @classmethod
    def start(cls, partner: "Partner", endpoint_path: str) -> "StepLog | None":
        if not (partner.enable_logging and logger.isEnabledFor(logging.INFO)):
            return None
        return cls(
            [
                f"🚀 開始處理動態Partner Postback: endpoint_path={endpoint_path}",
                "🔍 步驟1: 查找Partner配置",
                f"✅ 找到Partner: {partner.partner_name} (code: {partner.partner_code})",
            ]
        )

    def received(self, params: Mapping[str, Any]) -> None:
        self.lines += ("📊 步驟2: 收集原始數據", f"📋 原始參數: {params}", "🔄 步驟3: 參數映射處理")

    def mapped(self, sources: Mapping[str, str], params: Mapping[str, Any]) -> None:
        self.lines += (f"  映射: {name} -> {source} = {params[source]}" for name, source in sources.items())

    def dedupe_check(self) -> None:
        self.lines.append("🔍 步驟4: 檢查重複轉化 (由數據庫唯一約束保證)")

    def creating(self) -> None:
        self.lines.append("💾 步驟5: 創建轉化記錄")

    def processed(self) -> None:
        self.lines.append("✅ 步驟6: 標記為已處理")

    def repeat(self, conversion_id: str, stored: Any) -> None:
        self.lines.append(
            f"🔁 已有轉化: conversion_id={conversion_id}, outcome={stored.outcome.label} "
            f"{stored.note or stored.changes or ''}"
        )

    def invalid(self, processing_error: str) -> None:
        self.lines.append(f"❌ 拒絕: {processing_error}")

    def refused(self, reason: str) -> None:
        self.end(f"⛔ 拒絕: {reason}")

    def configuration_unavailable(self) -> None:
        self.end("⛔ 配置數據庫不可用")

    def database_unavailable(self) -> None:
        self.end("⛔ 數據庫不可用")

    def stored(self, partner: "Partner", stored: Any, elapsed_ms: float) -> None:
        """The last line: `stored` is the store's Stored (its outcome, conversion, errors)."""
        conversion_id = stored.conversion.conversion_id
        if stored.outcome is Outcome.INVALID:
            # Stored for the record, but refused: the step log must not end in a success line.
            self.end(
                f"❌ Partner Postback已拒絕 (數據無效): partner={partner.partner_name}, "
                f"conversion_id={conversion_id or '-'}, outcome={stored.outcome.answer}, "
                f"time={elapsed_ms:.2f}ms"
            )
        else:
            self.end(
                f"🎉 Partner Postback處理完成: partner={partner.partner_name}, conversion_id={conversion_id}, "
                f"outcome={stored.outcome.answer}, time={elapsed_ms:.2f}ms"
            )

    def end(self, last_line: str) -> None:
        self.lines.append(last_line)
        logger.info("\n".join(self.lines))
