"""Membership bookkeeping, with the time passed in: joins, silence, restarts, recovery."""

from __future__ import annotations

from yptask.cluster.membership import Member, Membership, MemberState


def member(name: str = "b", boot: str = "boot-1") -> Member:
    return Member(name, boot, "127.0.0.1:9000", "http://127.0.0.1:8000", started_at=100.0,
                  load={"echo": {"queued": 3, "workers": 1}})


def test_a_silent_member_is_suspected_then_declared_down_then_comes_back():
    members = Membership(suspect_after_s=1.5, down_after_s=3.0)
    assert members.heard(member(), now=10.0).what == "joined"
    assert members.heard(member(), now=11.0) is None
    assert members.check(now=12.0) == []
    (suspect,) = members.check(now=12.6)
    assert (suspect.what, suspect.member.state) == ("suspect", MemberState.SUSPECT)
    assert members.is_up("b") and members.check(now=13.0) == []
    (down,) = members.check(now=14.0)
    assert (down.what, members.is_up("b"), members.alive()) == ("down", False, [])
    assert members.check(now=20.0) == []  # said once
    assert members.heard(member(), now=21.0).what == "back"
    assert [m.name for m in members.alive()] == ["b"]


def test_a_new_boot_id_is_a_restart():
    members = Membership()
    members.heard(member(boot="boot-1"), now=1.0)
    assert members.heard(member(boot="boot-2"), now=2.0).what == "restarted"


def test_a_dead_member_goes_down_without_passing_through_suspect_if_checks_are_late():
    members = Membership(suspect_after_s=1.0, down_after_s=2.0)
    members.heard(member(), now=0.0)
    assert [c.what for c in members.check(now=5.0)] == ["down"]


def test_heartbeat_terms_round_trip_and_junk_is_ignored():
    sent = member()
    assert Member.from_term(sent.to_term()) == sent
    assert Member.from_term({"name": 1}) is None
    assert Member.from_term("nonsense") is None
