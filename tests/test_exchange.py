"""jaxal.labeling.exchange: queries out to, and answers in from, CSV files and Label Studio.

The Label Studio exports below are written out by hand in the shape Label Studio
produces them (the "JSON" export is its task format with annotations; "JSON_MIN" has
one flat record per annotation, the Choices tag's name as the key of the choice).
Pure Python: no JAX, every test takes milliseconds.
"""

from __future__ import annotations

import csv
import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jaxal.labeling.exchange import (
    Answer,
    ExchangeError,
    label_studio_config,
    label_studio_tasks,
    read_answers,
    read_answers_csv,
    read_label_studio,
    write_label_studio_tasks,
    write_query_csv,
)

CLASSES = ["cat", "dog", "bird"]
FILES = ["imgs/a/cat1.jpg", "imgs/b/cat1.jpg", "imgs/a/dog7.png", "imgs/bird 3.jpg", "imgs/a/x+y.jpg"]


def _write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return path


def _json(path, value):
    return _write(path, json.dumps(value, indent=2))


def _fill(path, labels):
    """An annotator fills the label column of a query CSV."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    column = rows[0].index("label")
    for row, label in zip(rows[1:], labels):
        row[column] = label
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


# --------------------------------------------------------------------------- CSV


def test_query_csv_round_trip_with_files(tmp_path):
    path = tmp_path / "query.csv"
    written = write_query_csv(path, np.array([4, 0, 3, 2]), files=FILES)
    assert written == str(path)
    assert path.read_text().splitlines() == [
        "index,file,label", "4,imgs/a/x+y.jpg,", "0,imgs/a/cat1.jpg,", "3,imgs/bird 3.jpg,", "2,imgs/a/dog7.png,"]
    assert os.listdir(tmp_path) == ["query.csv"]  # no temporary file left behind

    _fill(path, ["bird", "1", "", "DOG"])  # a name, an index, not answered yet, a name in another case
    answers = read_answers_csv(path, num_classes=3, classes=CLASSES, files=FILES, annotator="ann")
    assert answers == [Answer(4, 2, "ann", None), Answer(0, 1, "ann", None), Answer(2, 1, "ann", None)]
    assert all(type(a.index) is int and type(a.label) is int for a in answers)


def test_query_csv_without_files_replaces_the_old_query(tmp_path):
    path = tmp_path / "query.csv"
    _write(path, "old content\n")
    write_query_csv(path, [7, 5])
    assert path.read_text().splitlines() == ["index,label", "7,", "5,"]
    _fill(path, ["2", "0"])
    assert read_answers_csv(path, num_classes=3) == [Answer(7, 2), Answer(5, 0)]


def test_answers_csv_header_spelling_bom_file_column_annotator_and_time(tmp_path):
    path = _write(tmp_path / "answers.csv",
                  " File , LABEL ,Annotator, Time ,comment\n"
                  "imgs/a/dog7.png,dog,ann@x.org,2024-05-01T10:00:00Z,sure\n"
                  "/home/me/data/imgs/b/cat1.jpg, Cat ,,,\n"  # a longer path: its tail decides
                  "bird 3.jpg,2,bob,,\n"  # a unique basename
                  "\n"
                  "dog7.png,,bob,,skipped: no label yet\n",
                  encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    answers = read_answers_csv(path, num_classes=3, classes=CLASSES, files=FILES, annotator="default")
    assert answers == [Answer(2, 1, "ann@x.org", "2024-05-01T10:00:00Z"), Answer(1, 0, "default", None),
                       Answer(3, 2, "bob", None)]


def test_answers_csv_index_and_file_agree_and_semicolons(tmp_path):
    path = _write(tmp_path / "answers.csv", "index;file;label\n2;imgs/a/dog7.png;1\n0;imgs/a/cat1.jpg;cat\n")
    assert read_answers_csv(path, num_classes=3, classes=CLASSES, files=FILES) == [Answer(2, 1), Answer(0, 0)]
    # without files the index is enough: the file column is only for the annotator
    assert read_answers_csv(path, num_classes=3, classes=CLASSES) == [Answer(2, 1), Answer(0, 0)]


def test_labels_exact_names_first_then_indices_then_any_case(tmp_path):
    path = _write(tmp_path / "answers.csv", "index,label\n0,cat\n1,Cat\n2,0\n3, CAT \n")
    with pytest.raises(ExchangeError, match=r":5: label 'CAT' matches several classes ignoring case"):
        read_answers_csv(path, num_classes=3, classes=["Cat", "cat", "0"])
    path = _write(tmp_path / "answers.csv", "index,label\n0,cat\n1,Cat\n2,0\n3,2\n")
    answers = read_answers_csv(path, num_classes=3, classes=["Cat", "cat", "0"])
    assert [a.label for a in answers] == [1, 0, 2, 2]  # "0" is a class's name: the name wins


CSV_ERRORS = [
    ("name,label\nx,1\n", {}, ":1:", "neither an 'index' nor a 'file' column"),
    ("index,class\n1,1\n", {}, ":1:", "no 'label' column"),
    ("index,label\n1,1\nx3,1\n", {}, ":3:", "index 'x3' is not an integer"),
    ("index,label\n1,1\n\n-1,1\n", {}, ":4:", "index -1 is negative"),
    ("file,label\nimgs/cow.jpg,1\n", {"files": FILES}, ":2:", "'imgs/cow.jpg' is not one of the pool's files"),
    ("file,label\ncat1.jpg,1\n", {"files": FILES}, ":2:", "ambiguous"),
    ("file,label\nimgs/a/cat1.jpg,1\n", {}, ":2:", "pass files="),
    ("index,label\n1,3\n", {}, ":2:", "label 3 is out of range [0, 3)"),
    ("index,label\n1,cow\n", {"classes": CLASSES}, ":2:", "'cow' is not a class name"),
    ("index,label\n1,cat\n", {}, ":2:", "pass classes="),
    ("index,file,label\n1,imgs/a/dog7.png,0\n", {"files": FILES}, ":2:", "is row 2 of the pool but the index says 1"),
    ("index,label\n1,1,extra\n", {}, ":2:", "3 cells but the header has 2"),
    ("", {}, "", "empty"),
]


@pytest.mark.parametrize("text, kw, place, problem", CSV_ERRORS)
def test_answers_csv_errors_name_file_line_and_problem(tmp_path, text, kw, place, problem):
    path = _write(tmp_path / "answers.csv", text)
    with pytest.raises(ExchangeError) as info:
        read_answers_csv(path, num_classes=3, **kw)
    message = str(info.value)
    assert message.startswith(str(path) + place) and problem in message, message


@pytest.mark.parametrize("indices, files, problem", [
    ([1, -2], None, "index -2 is negative"),
    ([1, 5], FILES, "index 5 is outside the pool's files"),
    ([1, 1], None, "index 1 is queried twice"),
    ([1.5], None, "index 1.5 is not an integer"),
])
def test_write_query_errors(tmp_path, indices, files, problem):
    path = tmp_path / "query.csv"
    for write in (write_query_csv, write_label_studio_tasks):
        with pytest.raises(ExchangeError, match=problem) as info:
            write(path, indices, files=files, **({} if write is write_query_csv else {"data_key": "text"}))
        assert str(path) in str(info.value)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- Label Studio: config and tasks


def test_label_studio_config_is_xml_listing_every_class():
    classes = ["cat", "dog & puppy", 'say "hi"', "<b>"]
    view = ET.fromstring(label_studio_config(classes))
    image, choices = list(view)
    assert (image.tag, image.get("name"), image.get("value")) == ("Image", "image", "$image")
    assert (choices.tag, choices.get("name"), choices.get("toName")) == ("Choices", "label", "image")
    assert choices.get("choice") == "single"
    assert [c.get("value") for c in choices] == classes

    text, choices = list(ET.fromstring(label_studio_config(["pos", "neg"], data_key="text")))
    assert (text.tag, text.get("name"), text.get("value"), choices.get("toName")) == ("Text", "text", "$text", "text")
    with pytest.raises(ValueError, match="distinct"):
        label_studio_config(["a", "a"])


def test_label_studio_tasks_carry_the_row_and_the_url():
    assert label_studio_tasks([3, 0], files=FILES) == [
        {"data": {"image": "imgs/bird 3.jpg", "index": 3}}, {"data": {"image": "imgs/a/cat1.jpg", "index": 0}}]
    urls = [t["data"]["image"] for t in label_studio_tasks([2], files=["/data/x.png", "/data/y.png", "/z.png"],
                                                              url_prefix="http://host/static/")]
    assert urls == ["http://host/static/z.png"]
    urls = [t["data"]["image"] for t in label_studio_tasks([0], files=FILES, url_prefix="http://host/static")]
    assert urls == ["http://host/static/imgs/a/cat1.jpg"]
    urls = [t["data"]["image"] for t in label_studio_tasks([0], files=FILES, url_prefix="/data/local-files/?d=")]
    assert urls == ["/data/local-files/?d=imgs/a/cat1.jpg"]
    assert label_studio_tasks([4, 1], data_key="text") == [{"data": {"index": 4}}, {"data": {"index": 1}}]
    with pytest.raises(ExchangeError, match="image tasks need files="):
        label_studio_tasks([0])


def test_write_label_studio_tasks(tmp_path):
    path = tmp_path / "tasks.json"
    assert write_label_studio_tasks(path, [np.int64(2), 4], files=FILES, url_prefix="s3://bucket") == str(path)
    assert json.loads(path.read_text()) == label_studio_tasks([2, 4], files=FILES, url_prefix="s3://bucket")
    assert path.read_text().startswith('[\n  {\n    "data"')  # indent=2
    assert os.listdir(tmp_path) == ["tasks.json"]


def _exported(tasks, choices, *, drop_index=False):
    """What Label Studio exports after importing ``tasks`` and one annotation per task."""
    out = []
    for k, (task, choice) in enumerate(zip(tasks, choices)):
        data = dict(task["data"])
        if drop_index:
            del data["index"]
        out.append({
            "id": 9000 + k, "data": data, "meta": {}, "project": 4, "inner_id": k + 1,
            "created_at": "2024-05-01T09:00:00.000000Z", "updated_at": "2024-05-01T09:00:00.000000Z",
            "annotations": [{
                "id": 500 + k, "completed_by": 1, "was_cancelled": False, "ground_truth": False,
                "result": [{"id": f"r{k}", "from_name": "label", "to_name": "image", "type": "choices",
                            "origin": "manual", "value": {"choices": [choice]}}],
                "created_at": f"2024-05-01T10:00:0{k}.000000Z", "updated_at": f"2024-05-01T10:00:0{k}.000000Z",
                "lead_time": 2.5, "task": 9000 + k, "project": 4,
            }],
            "predictions": [],
        })
    return out


def test_label_studio_round_trip_rows_come_from_data_not_ids(tmp_path):
    prefix = "/data/local-files/?d=pool/"
    tasks = label_studio_tasks([4, 0, 2, 3], files=FILES, url_prefix=prefix)
    answers = [Answer(4, 0, "1", "2024-05-01T10:00:00.000000Z"), Answer(0, 1, "1", "2024-05-01T10:00:01.000000Z"),
               Answer(2, 1, "1", "2024-05-01T10:00:02.000000Z"), Answer(3, 2, "1", "2024-05-01T10:00:03.000000Z")]
    path = _json(tmp_path / "export.json", _exported(tasks, ["cat", "dog", "dog", "bird"]))
    assert read_label_studio(path, num_classes=3, classes=CLASSES) == answers
    # tasks made without data.index: the row is found from the URL through the files
    path = _json(tmp_path / "export.json", _exported(tasks, ["cat", "dog", "dog", "bird"], drop_index=True))
    assert read_label_studio(path, num_classes=3, classes=CLASSES, files=FILES) == answers


# Label Studio's "JSON" export, as it writes it.
FULL_EXPORT = [
    {   # two annotations disagree: the most recent one (listed first here) wins
        "id": 101, "data": {"image": "/data/local-files/?d=imgs/a/cat1.jpg", "index": 0},
        "annotations": [
            {"id": 12, "completed_by": {"id": 3, "email": "bob@lab.org", "first_name": "", "last_name": ""},
             "result": [{"id": "q1", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["dog"]}, "origin": "manual"}],
             "was_cancelled": False, "ground_truth": False, "created_at": "2024-05-02T08:00:00.000000Z",
             "updated_at": "2024-05-02T08:30:00.000000Z", "lead_time": 3.1, "task": 101, "project": 4},
            {"id": 11, "completed_by": 1,
             "result": [{"id": "q2", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["cat"]}, "origin": "manual"}],
             "was_cancelled": False, "ground_truth": False, "created_at": "2024-05-01T08:00:00.000000Z",
             "updated_at": "2024-05-01T08:00:00.000000Z", "lead_time": 4.0, "task": 101, "project": 4},
        ],
        "predictions": [], "meta": {}, "created_at": "2024-04-30T12:00:00.000000Z",
        "updated_at": "2024-05-02T08:30:00.000000Z", "inner_id": 1, "total_annotations": 2,
        "cancelled_annotations": 0, "total_predictions": 0, "project": 4, "updated_by": 3,
    },
    {   # only a cancelled (skipped) annotation and a model's prediction: no answer
        "id": 102, "data": {"image": "/data/local-files/?d=imgs/a/dog7.png", "index": 2},
        "annotations": [
            {"id": 13, "completed_by": 1, "result": [], "was_cancelled": True, "ground_truth": False,
             "created_at": "2024-05-01T08:01:00.000000Z", "updated_at": "2024-05-01T08:01:00.000000Z",
             "lead_time": 1.0, "task": 102, "project": 4},
        ],
        "predictions": [
            {"id": 7, "model_version": "jaxal-0", "score": 0.91, "created_ago": "2 hours", "task": 102,
             "result": [{"id": "p1", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["bird"]}}]},
        ],
        "meta": {}, "inner_id": 2, "project": 4,
    },
    {   # a prediction and an annotation: the annotation is the answer; a newer cancelled one does not count
        "id": 103, "data": {"image": "/data/local-files/?d=imgs/bird%203.jpg", "index": 3},
        "annotations": [
            {"id": 14, "completed_by": 1,
             "result": [{"id": "q3", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["bird"]}}],
             "was_cancelled": False, "ground_truth": False, "created_at": "2024-05-01T09:00:00.000000Z",
             "updated_at": "2024-05-01T09:00:00.000000Z", "lead_time": 2.0, "task": 103, "project": 4},
            {"id": 15, "completed_by": {"id": 3, "email": "bob@lab.org"}, "was_cancelled": True,
             "result": [{"id": "q4", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["dog"]}}],
             "created_at": "2024-05-03T09:00:00.000000Z", "updated_at": "2024-05-03T09:00:00.000000Z",
             "lead_time": 0.4, "task": 103, "project": 4},
        ],
        "predictions": [
            {"id": 8, "model_version": "jaxal-0", "score": 0.55, "task": 103,
             "result": [{"id": "p2", "from_name": "label", "to_name": "image", "type": "choices",
                         "value": {"choices": ["cat"]}}]},
        ],
        "meta": {}, "inner_id": 3, "project": 4,
    },
    {   # not labeled yet
        "id": 104, "data": {"image": "/data/local-files/?d=imgs/a/x%2By.jpg", "index": 4},
        "annotations": [], "predictions": [], "meta": {}, "inner_id": 4, "project": 4,
    },
]


def test_read_label_studio_json_export(tmp_path):
    path = _json(tmp_path / "project-4-at-2024-05-03.json", FULL_EXPORT)
    assert read_label_studio(path, num_classes=3, classes=CLASSES) == [
        Answer(0, 1, "bob@lab.org", "2024-05-02T08:30:00.000000Z"),
        Answer(3, 2, "1", "2024-05-01T09:00:00.000000Z"),
    ]
    # the same export, its tasks made without data.index: rows from the URLs (quoted, ?d=)
    tasks = json.loads(json.dumps(FULL_EXPORT))
    for task in tasks:
        del task["data"]["index"]
    tasks[2]["data"]["image"] = "http://host:8081/static/imgs/bird%203.jpg?v=2"  # served over HTTP
    path = _json(tmp_path / "no-index.json", tasks)
    answers = read_answers(path, num_classes=3, classes=CLASSES, files=FILES)
    assert [(a.index, a.label) for a in answers] == [(0, 1), (3, 2)]


# Label Studio's "JSON_MIN" export of a project with an extra data field: one record per
# annotation (cancelled ones left out), and a record without answer for an unlabeled task.
MIN_EXPORT = [
    {"image": "/data/upload/4/1a2b3c4d-dog7.png", "index": 2, "caption": "a photo", "id": 201, "label": "dog",
     "annotator": "bob@lab.org", "annotation_id": 31, "created_at": "2024-05-02T08:00:00.000000Z",
     "updated_at": "2024-05-02T08:00:00.000000Z", "lead_time": 3.0},
    {"image": "/data/upload/4/1a2b3c4d-dog7.png", "index": 2, "caption": "a photo", "id": 201, "label": "cat",
     "annotator": 1, "annotation_id": 30, "created_at": "2024-05-01T08:00:00.000000Z",
     "updated_at": "2024-05-01T08:00:00.000000Z", "lead_time": 5.0},
    {"image": "/data/upload/4/5e6f7a8b-cat1.jpg", "index": 1, "caption": "bird", "id": 202, "label": "Bird",
     "annotator": 1, "annotation_id": 32, "created_at": "2024-05-01T09:00:00.000000Z",
     "updated_at": "2024-05-01T09:30:00.000000Z", "lead_time": 1.0},
    {"image": "/data/upload/4/9c9c9c9c-x+y.jpg", "index": 4, "caption": "todo", "id": 203, "annotator": "",
     "annotation_id": None, "created_at": None, "updated_at": None, "lead_time": None},
]


def test_read_label_studio_json_min_export(tmp_path):
    path = _json(tmp_path / "min.json", MIN_EXPORT)
    expected = [Answer(2, 1, "bob@lab.org", "2024-05-02T08:00:00.000000Z"),
                Answer(1, 2, "1", "2024-05-01T09:30:00.000000Z")]
    assert read_label_studio(path, num_classes=3, classes=CLASSES) == expected
    assert read_label_studio(path, num_classes=3, classes=CLASSES, from_name="label") == expected
    # without data.index: the upload prefix and the folder are matched away
    records = [{k: v for k, v in r.items() if k != "index"} for r in MIN_EXPORT]
    path = _json(tmp_path / "min-no-index.json", records)
    files = ["imgs/cat1.jpg", "imgs/cat2.jpg", "imgs/dog7.png"]
    assert [a[:2] for a in read_label_studio(path, num_classes=3, classes=CLASSES, files=files)] == [(2, 1), (0, 2)]
    # a multi-choice Choices tag exports {"choices": [...]}: one class in it is an answer
    records = [dict(MIN_EXPORT[0], label={"choices": ["bird"]})]
    path = _json(tmp_path / "min-choices.json", records)
    assert read_label_studio(path, num_classes=3, classes=CLASSES)[0][:2] == (2, 2)


def _task(task_id, data, choices, from_name="label"):
    return {"id": task_id, "data": data, "annotations": [
        {"id": 1, "completed_by": 1, "was_cancelled": False, "created_at": "2024-05-01T08:00:00Z",
         "result": [{"from_name": from_name, "to_name": "image", "type": "choices", "value": {"choices": choices}}]}]}


LS_ERRORS = [
    ({"tasks": []}, {}, "", "accepted are its 'JSON' export"),
    ([_task(7, {"index": 0}, ["cat", "dog"])], {}, "task 7", "multi-choice answer ['cat', 'dog']"),
    ([_task(7, {"index": 0}, ["cow"])], {}, "task 7", "'cow' is not a class name"),
    ([_task(8, {"image": "imgs/a/dog7.png"}, ["cat"])], {}, "task 8", "pass files="),
    ([_task(8, {"index": -3}, ["cat"])], {}, "task 8", "index -3 is negative"),
    ([_task(8, {"index": "x"}, ["cat"])], {}, "task 8", "index 'x' is not an integer"),
    ([_task(8, {"image": "imgs/cow.jpg"}, ["cat"])], {"files": FILES}, "task 8", "not one of the pool's files"),
    ([_task(8, {"image": "cat1.jpg"}, ["cat"])], {"files": FILES}, "task 8", "ambiguous"),
    ([_task(8, {"text": "hello"}, ["cat"])], {}, "task 8", "no 'index' nor 'image'"),
    ([_task(1, {"index": 0}, ["cat"]), _task(2, {"index": 1}, ["dog"], from_name="quality")], {}, "",
     "several Choices tags ['label', 'quality']; pass from_name="),
    ([_task(1, {"index": 0}, ["cat"])], {"from_name": "class"}, "", "no answers to a Choices tag named 'class'"),
    ([dict(MIN_EXPORT[0], label="cow")], {"from_name": "label"}, "task 201", "'cow' is not a class name"),
    ([dict(MIN_EXPORT[0], verdict="cat")], {}, "", "several keys may hold the answers ['label', 'verdict']"),
    ([{k: v for k, v in MIN_EXPORT[0].items() if k != "label"}], {}, "", "pass from_name="),
]


@pytest.mark.parametrize("content, kw, place, problem", LS_ERRORS)
def test_read_label_studio_errors_name_file_task_and_problem(tmp_path, content, kw, place, problem):
    path = _json(tmp_path / "export.json", content)
    with pytest.raises(ExchangeError) as info:
        read_label_studio(path, num_classes=3, classes=CLASSES, **kw)
    message = str(info.value)
    assert message.startswith(f"{path}: {place}") and problem in message, message


def test_read_label_studio_invalid_json_names_the_line(tmp_path):
    path = _write(tmp_path / "export.json", '[\n  {"id": 1,\n  "data": }\n]\n')
    with pytest.raises(ExchangeError, match=r"export\.json:3: not valid JSON"):
        read_label_studio(path, num_classes=3)


def test_read_answers_dispatches_on_the_extension(tmp_path):
    csv_path = _write(tmp_path / "answers.CSV", "index,label\n3,1\n")
    assert read_answers(csv_path, num_classes=2) == [Answer(3, 1)]
    json_path = _json(tmp_path / "answers.json", [_task(1, {"index": 5}, ["1"])])
    assert read_answers(json_path, num_classes=2) == [Answer(5, 1, "1", "2024-05-01T08:00:00Z")]
    with pytest.raises(ExchangeError, match=r"answers\.txt.*\.csv.*\.json"):
        read_answers(_write(tmp_path / "answers.txt", ""), num_classes=2)
