// payoutd console: the only script, served from /console/assets (the Content-Security-Policy
// allows no other and no inline script). Every page works without it; it adds drag and drop
// (and file picking) to the batch upload form by reading the file into the form's text area.
"use strict";
(function () {
  function load(file, target, status) {
    if (!file) { return; }
    var reader = new FileReader();
    reader.onload = function () {
      target.value = String(reader.result);
      if (status) { status.textContent = file.name + " (" + file.size + " bytes) loaded"; }
    };
    reader.onerror = function () {
      if (status) { status.textContent = "could not read " + file.name; }
    };
    reader.readAsText(file);
  }

  function setUp() {
    var zone = document.getElementById("dropzone");
    var target = document.getElementById("csv");
    var picker = document.getElementById("file");
    var status = document.getElementById("file-status");
    if (!zone || !target) { return; }
    if (picker) {
      picker.addEventListener("change", function () { load(picker.files[0], target, status); });
    }
    ["dragenter", "dragover"].forEach(function (name) {
      zone.addEventListener(name, function (e) { e.preventDefault(); zone.classList.add("over"); });
    });
    ["dragleave", "drop"].forEach(function (name) {
      zone.addEventListener(name, function () { zone.classList.remove("over"); });
    });
    zone.addEventListener("drop", function (e) {
      e.preventDefault();
      if (e.dataTransfer && e.dataTransfer.files.length > 0) { load(e.dataTransfer.files[0], target, status); }
    });
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", setUp);
  } else {
    setUp();
  }
})();
