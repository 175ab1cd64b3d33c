"""The raw files behind the five ICL datasets HELMET loads from the Hub, and how their loading scripts made rows.

HELMET (data.py, load_icl) read CogComp/trec, PolyAI/banking77, clinc_oos ("plus") and
xingkunliuxtracta/nlu_evaluation_data through `datasets.load_dataset`, whose loading scripts current `datasets`
no longer runs. Each script downloaded one or two raw files and yielded their rows in file order; kvbench
downloads the same files, checks them against the SHA-256 the scripts recorded (their dataset_infos.json in
huggingface/datasets, before the scripts moved to the Hub in October 2022) and parses them as the scripts did,
so the rows, their integer labels (positions in the scripts' label lists) and their order are HELMET's.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np

# Per source: file key -> (URL, SHA-256 as the scripts recorded it).
SOURCES = {
    "trec": {
        "train": (
            "https://cogcomp.seas.upenn.edu/Data/QA/QC/train_5500.label",
            "9e4c8bdcaffb96ed61041bd64b564183d52793a8e91d84fc3a8646885f466ec3",
        ),
        "test": (
            "https://cogcomp.seas.upenn.edu/Data/QA/QC/TREC_10.label",
            "033f22c028c2bbba9ca682f68ffe204dc1aa6e1cf35dd6207f2d4ca67f0d0e8e",
        ),
    },
    "banking77": {
        "train": (
            "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/train.csv",
            "b06e26ac675513959a63135f11b94ea7786ed02da65db93a5650d8838cbc664b",
        ),
        "test": (
            "https://raw.githubusercontent.com/PolyAI-LDN/task-specific-datasets/master/banking_data/test.csv",
            "d12d6e3bc4c3103966ae786dc435913c0c563dfa328f5a3646d0e62cfeeb474d",
        ),
    },
    "clinc150": {
        "plus": (
            "https://raw.githubusercontent.com/clinc/oos-eval/master/data/data_oos_plus.json",
            "bfcca9ae515623541dc1983c94c4ed7cae9d26b42ae47d74b972e51bb6f7a21f",
        ),
    },
    "nlu": {
        "all": (
            "https://raw.githubusercontent.com/xliuhw/NLU-Evaluation-Data/master/AnnotatedData/"
            "NLU-Data-Home-Domain-Annotated-All.csv",
            "5f6dbf6d38fc111217924945ac59c554e0b926d5aa836ecdd0d089d2ca48e1d9",
        ),
    },
}

# The scripts' label lists, in id order (a label's id is its position).
TREC_COARSE_LABELS: list[str] = ["ABBR", "ENTY", "DESC", "HUM", "LOC", "NUM"]

TREC_FINE_LABELS: list[str] = (
    ["ABBR:" + x for x in ("abb", "exp")]
    + [
        "ENTY:" + x
        for x in (
            "animal",
            "body",
            "color",
            "cremat",
            "currency",
            "dismed",
            "event",
            "food",
            "instru",
            "lang",
            "letter",
            "other",
            "plant",
            "product",
            "religion",
            "sport",
            "substance",
            "symbol",
            "techmeth",
            "termeq",
            "veh",
            "word",
        )
    ]
    + ["DESC:" + x for x in ("def", "desc", "manner", "reason")]
    + ["HUM:" + x for x in ("gr", "ind", "title", "desc")]
    + ["LOC:" + x for x in ("city", "country", "mount", "other", "state")]
    + [
        "NUM:" + x
        for x in (
            "code",
            "count",
            "date",
            "dist",
            "money",
            "ord",
            "other",
            "period",
            "perc",
            "speed",
            "temp",
            "volsize",
            "weight",
        )
    ]
)

BANKING77_LABELS: list[str] = [
    "activate_my_card",
    "age_limit",
    "apple_pay_or_google_pay",
    "atm_support",
    "automatic_top_up",
    "balance_not_updated_after_bank_transfer",
    "balance_not_updated_after_cheque_or_cash_deposit",
    "beneficiary_not_allowed",
    "cancel_transfer",
    "card_about_to_expire",
    "card_acceptance",
    "card_arrival",
    "card_delivery_estimate",
    "card_linking",
    "card_not_working",
    "card_payment_fee_charged",
    "card_payment_not_recognised",
    "card_payment_wrong_exchange_rate",
    "card_swallowed",
    "cash_withdrawal_charge",
    "cash_withdrawal_not_recognised",
    "change_pin",
    "compromised_card",
    "contactless_not_working",
    "country_support",
    "declined_card_payment",
    "declined_cash_withdrawal",
    "declined_transfer",
    "direct_debit_payment_not_recognised",
    "disposable_card_limits",
    "edit_personal_details",
    "exchange_charge",
    "exchange_rate",
    "exchange_via_app",
    "extra_charge_on_statement",
    "failed_transfer",
    "fiat_currency_support",
    "get_disposable_virtual_card",
    "get_physical_card",
    "getting_spare_card",
    "getting_virtual_card",
    "lost_or_stolen_card",
    "lost_or_stolen_phone",
    "order_physical_card",
    "passcode_forgotten",
    "pending_card_payment",
    "pending_cash_withdrawal",
    "pending_top_up",
    "pending_transfer",
    "pin_blocked",
    "receiving_money",
    "Refund_not_showing_up",
    "request_refund",
    "reverted_card_payment?",
    "supported_cards_and_currencies",
    "terminate_account",
    "top_up_by_bank_transfer_charge",
    "top_up_by_card_charge",
    "top_up_by_cash_or_cheque",
    "top_up_failed",
    "top_up_limits",
    "top_up_reverted",
    "topping_up_by_card",
    "transaction_charged_twice",
    "transfer_fee_charged",
    "transfer_into_account",
    "transfer_not_received_by_recipient",
    "transfer_timing",
    "unable_to_verify_identity",
    "verify_my_identity",
    "verify_source_of_funds",
    "verify_top_up",
    "virtual_card_not_working",
    "visa_or_mastercard",
    "why_verify_identity",
    "wrong_amount_of_cash_received",
    "wrong_exchange_rate_for_cash_withdrawal",
]

# Not alphabetical: this is the order of the clinc_oos script (note "oos" = 42).
CLINC150_LABELS: list[str] = [
    "restaurant_reviews",
    "nutrition_info",
    "account_blocked",
    "oil_change_how",
    "time",
    "weather",
    "redeem_rewards",
    "interest_rate",
    "gas_type",
    "accept_reservations",
    "smart_home",
    "user_name",
    "report_lost_card",
    "repeat",
    "whisper_mode",
    "what_are_your_hobbies",
    "order",
    "jump_start",
    "schedule_meeting",
    "meeting_schedule",
    "freeze_account",
    "what_song",
    "meaning_of_life",
    "restaurant_reservation",
    "traffic",
    "make_call",
    "text",
    "bill_balance",
    "improve_credit_score",
    "change_language",
    "no",
    "measurement_conversion",
    "timer",
    "flip_coin",
    "do_you_have_pets",
    "balance",
    "tell_joke",
    "last_maintenance",
    "exchange_rate",
    "uber",
    "car_rental",
    "credit_limit",
    "oos",
    "shopping_list",
    "expiration_date",
    "routing",
    "meal_suggestion",
    "tire_change",
    "todo_list",
    "card_declined",
    "rewards_balance",
    "change_accent",
    "vaccines",
    "reminder_update",
    "food_last",
    "change_ai_name",
    "bill_due",
    "who_do_you_work_for",
    "share_location",
    "international_visa",
    "calendar",
    "translate",
    "carry_on",
    "book_flight",
    "insurance_change",
    "todo_list_update",
    "timezone",
    "cancel_reservation",
    "transactions",
    "credit_score",
    "report_fraud",
    "spending_history",
    "directions",
    "spelling",
    "insurance",
    "what_is_your_name",
    "reminder",
    "where_are_you_from",
    "distance",
    "payday",
    "flight_status",
    "find_phone",
    "greeting",
    "alarm",
    "order_status",
    "confirm_reservation",
    "cook_time",
    "damaged_card",
    "reset_settings",
    "pin_change",
    "replacement_card_duration",
    "new_card",
    "roll_dice",
    "income",
    "taxes",
    "date",
    "who_made_you",
    "pto_request",
    "tire_pressure",
    "how_old_are_you",
    "rollover_401k",
    "pto_request_status",
    "how_busy",
    "application_status",
    "recipe",
    "calendar_update",
    "play_music",
    "yes",
    "direct_deposit",
    "credit_limit_change",
    "gas",
    "pay_bill",
    "ingredients_list",
    "lost_luggage",
    "goodbye",
    "what_can_i_ask_you",
    "book_hotel",
    "are_you_a_bot",
    "next_song",
    "change_speed",
    "plug_type",
    "maybe",
    "w2",
    "oil_change_when",
    "thank_you",
    "shopping_list_update",
    "pto_balance",
    "order_checks",
    "travel_alert",
    "fun_fact",
    "sync_device",
    "schedule_maintenance",
    "apr",
    "transfer",
    "ingredient_substitution",
    "calories",
    "current_location",
    "international_fees",
    "calculator",
    "definition",
    "next_holiday",
    "update_playlist",
    "mpg",
    "min_payment",
    "change_user_name",
    "restaurant_suggestion",
    "travel_notification",
    "cancel",
    "pto_used",
    "travel_suggestion",
    "change_volume",
]

NLU_LABELS: list[str] = [
    "alarm_query",
    "alarm_remove",
    "alarm_set",
    "audio_volume_down",
    "audio_volume_mute",
    "audio_volume_other",
    "audio_volume_up",
    "calendar_query",
    "calendar_remove",
    "calendar_set",
    "cooking_query",
    "cooking_recipe",
    "datetime_convert",
    "datetime_query",
    "email_addcontact",
    "email_query",
    "email_querycontact",
    "email_sendemail",
    "general_affirm",
    "general_commandstop",
    "general_confirm",
    "general_dontcare",
    "general_explain",
    "general_greet",
    "general_joke",
    "general_negate",
    "general_praise",
    "general_quirky",
    "general_repeat",
    "iot_cleaning",
    "iot_coffee",
    "iot_hue_lightchange",
    "iot_hue_lightdim",
    "iot_hue_lightoff",
    "iot_hue_lighton",
    "iot_hue_lightup",
    "iot_wemo_off",
    "iot_wemo_on",
    "lists_createoradd",
    "lists_query",
    "lists_remove",
    "music_dislikeness",
    "music_likeness",
    "music_query",
    "music_settings",
    "news_query",
    "play_audiobook",
    "play_game",
    "play_music",
    "play_podcasts",
    "play_radio",
    "qa_currency",
    "qa_definition",
    "qa_factoid",
    "qa_maths",
    "qa_stock",
    "recommendation_events",
    "recommendation_locations",
    "recommendation_movies",
    "social_post",
    "social_query",
    "takeaway_order",
    "takeaway_query",
    "transport_query",
    "transport_taxi",
    "transport_ticket",
    "transport_traffic",
    "weather_query",
]


def _ids(names: list[str]):
    """Name -> id as the scripts' ClassLabel did: the name, else the name stripped of whitespace."""
    index = {name: i for i, name in enumerate(names)}

    def lookup(name: str) -> int:
        if name in index or name.strip() in index:
            return index.get(name, index.get(name.strip()))
        raise ValueError(f"label {name!r} is not one of the {len(names)} labels")

    return lookup


Rows = list[tuple[str, int]]


def parse_trec(path: Path, fine: bool) -> Rows:
    """`FINE:label text` lines (binary, one stray 0xF0 byte read as a space, stripped, UTF-8); the coarse label
    is the part before the colon."""
    coarse_id, fine_id = _ids(TREC_COARSE_LABELS), _ids(TREC_FINE_LABELS)
    rows = []
    with open(path, "rb") as f:
        for raw in f:
            label, _, text = raw.replace(b"\xf0", b" ").strip().decode("utf-8").partition(" ")
            rows.append((text, fine_id(label) if fine else coarse_id(label.split(":")[0])))
    return rows


def parse_banking77(path: Path) -> Rows:
    """CSV `text,category` (header skipped), quoted, spaces after commas skipped."""
    label_id = _ids(BANKING77_LABELS)
    with open(path, encoding="utf-8") as f:
        reader = csv.reader(f, quotechar='"', delimiter=",", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        next(reader)
        return [(text, label_id(label)) for text, label in reader]


def parse_clinc150(path: Path, split: str) -> Rows:
    """The "plus" configuration: a split's in-scope pairs, then its out-of-scope ones ("val" is validation)."""
    label_id = _ids(CLINC150_LABELS)
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return [(text, label_id(label)) for text, label in data[split] + data[f"oos_{split}"]]


_NLU_SLOT = re.compile(r"\[(.+?)\s+\:+\s(.+?)\]")  # "[time : five am]" -> "five am"


def parse_nlu(path: Path) -> Rows:
    """`;`-separated, header skipped; rows whose answer_annotation is "null" dropped; text = the annotation with
    its slot markup removed; label = scenario_intent."""
    label_id = _ids(NLU_LABELS)
    rows = []
    with open(path, encoding="utf-8") as f:
        reader = csv.reader(f, quotechar='"', delimiter=";", quoting=csv.QUOTE_ALL, skipinitialspace=True)
        next(reader)
        for record in reader:
            scenario, intent, annotation = record[2], record[3], record[5]
            if annotation != "null":
                rows.append((_NLU_SLOT.sub(r"\2", annotation), label_id(f"{scenario}_{intent}")))
    return rows


def split_as_helmet(rows: Rows, seed: int = 42) -> tuple[Rows, Rows]:
    """NLU has one split; HELMET holds out 10% with `train_test_split(test_size=0.1, seed)`: the rows permuted
    with the seed, the first ceil(n / 10) the test split, the rest the train split, both in that order."""
    order = np.random.default_rng(seed).permutation(len(rows)).tolist()
    held_out = math.ceil(0.1 * len(rows))
    return [rows[i] for i in order[held_out:]], [rows[i] for i in order[:held_out]]


def icl_splits(files: dict[str, dict[str, Path]], seed: int = 42) -> dict[str, tuple[Rows, Rows]]:
    """{ICL dataset: (train rows, test rows)} as HELMET used them, from the downloaded files (by source and key).
    clinc150's test split is its validation split, as in HELMET."""
    trec, clinc = files["trec"], files["clinc150"]["plus"]
    return {
        "trec_coarse": (parse_trec(trec["train"], fine=False), parse_trec(trec["test"], fine=False)),
        "trec_fine": (parse_trec(trec["train"], fine=True), parse_trec(trec["test"], fine=True)),
        "banking77": (parse_banking77(files["banking77"]["train"]), parse_banking77(files["banking77"]["test"])),
        "clinc150": (parse_clinc150(clinc, "train"), parse_clinc150(clinc, "val")),
        "nlu": split_as_helmet(parse_nlu(files["nlu"]["all"]), seed),
    }
