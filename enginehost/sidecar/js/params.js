'use strict';

/**
 * Checks on request params. Each check throws a `bad_params` ReplyError whose message
 * starts with the field's name, so the host can tell which one it got wrong.
 */

const path = require('path');
const { ReplyError } = require('./protocol');

function bad(field, what) {
  return new ReplyError('bad_params', `${field}: ${what}`);
}

/**
 * A required non-empty string.
 * @param {object} params
 * @param {string} field
 * @returns {string}
 */
function string(params, field) {
  const value = params[field];
  if (typeof value !== 'string' || !value) throw bad(field, 'must be a non-empty string');
  return value;
}

/**
 * A string, or null; a missing field counts as null.
 * @param {object} params
 * @param {string} field
 * @returns {string|null}
 */
function optionalString(params, field) {
  const value = params[field];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !value) throw bad(field, 'must be a non-empty string or null');
  return value;
}

/**
 * A required string that may be empty (message text).
 * @param {object} params
 * @param {string} field
 * @returns {string}
 */
function text(params, field) {
  const value = params[field];
  if (typeof value !== 'string') throw bad(field, 'must be a string');
  return value;
}

/**
 * A required boolean.
 * @param {object} params
 * @param {string} field
 * @returns {boolean}
 */
function boolean(params, field) {
  const value = params[field];
  if (typeof value !== 'boolean') throw bad(field, 'must be a boolean');
  return value;
}

/**
 * A positive integer; `fallback` when missing (a required field has no fallback).
 * @param {object} params
 * @param {string} field
 * @param {number} [fallback]
 * @returns {number}
 */
function positiveInt(params, field, fallback) {
  const value = params[field];
  if (value === undefined && fallback !== undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0) throw bad(field, 'must be a positive integer');
  return value;
}

/**
 * An integer of zero or more (zero often meaning "none", as for a timeout).
 * @param {object} params
 * @param {string} field
 * @returns {number}
 */
function nonNegativeInt(params, field) {
  const value = params[field];
  if (!Number.isInteger(value) || value < 0) throw bad(field, 'must be an integer of 0 or more');
  return value;
}

/**
 * One of a fixed set of strings.
 * @param {object} params
 * @param {string} field
 * @param {string[]} allowed
 * @returns {string}
 */
function oneOf(params, field, allowed) {
  const value = params[field];
  if (!allowed.includes(value)) throw bad(field, `must be one of ${allowed.join(', ')}`);
  return value;
}

/**
 * An absolute filesystem path.
 * @param {object} params
 * @param {string} field
 * @returns {string}
 */
function absolutePath(params, field) {
  const value = string(params, field);
  if (!path.isAbsolute(value)) throw bad(field, 'must be an absolute path');
  return value;
}

/**
 * A phone number as digits, country code first.
 * @param {object} params
 * @param {string} field
 * @param {boolean} nullable
 * @returns {string|null}
 */
function phone(params, field, nullable) {
  const value = params[field];
  if (nullable && (value === undefined || value === null)) return null;
  if (typeof value !== 'string' || !/^\d{6,20}$/.test(value)) {
    throw bad(field, nullable ? 'must be digits (country code first) or null' : 'must be digits, country code first');
  }
  return value;
}

/**
 * A chat id in the library's dialect (`…@s.whatsapp.net`, `…@g.us`, `…@c.us`, …).
 * @param {object} params
 * @param {string} field
 * @param {string} [example] an id of the library's dialect, named in the error
 * @returns {string}
 */
function jid(params, field, example = '123@s.whatsapp.net') {
  const value = string(params, field);
  if (!/^[^@\s]+@[a-z.]+$/.test(value)) throw bad(field, `must be a chat id such as ${example}`);
  return value;
}

/**
 * A required non-empty string matching a pattern.
 * @param {object} params
 * @param {string} field
 * @param {RegExp} pattern
 * @param {string} what how the error describes a valid value
 * @returns {string}
 */
function matching(params, field, pattern, what) {
  const value = string(params, field);
  if (!pattern.test(value)) throw bad(field, `must be ${what}`);
  return value;
}

/**
 * A list of strings (possibly empty); a missing field counts as empty.
 * @param {object} params
 * @param {string} field
 * @returns {string[]}
 */
function stringList(params, field) {
  const value = params[field];
  if (value === undefined || value === null) return [];
  if (!Array.isArray(value) || !value.every((item) => typeof item === 'string')) {
    throw bad(field, 'must be a list of strings');
  }
  return [...value];
}

/**
 * An absolute filesystem path, or null; a missing field counts as null.
 * @param {object} params
 * @param {string} field
 * @returns {string|null}
 */
function optionalAbsolutePath(params, field) {
  const value = params[field];
  if (value === undefined || value === null) return null;
  if (typeof value !== 'string' || !path.isAbsolute(value)) throw bad(field, 'must be an absolute path or null');
  return value;
}

/**
 * A URL string, or null.
 * @param {object} params
 * @param {string} field
 * @returns {string|null}
 */
function optionalUrl(params, field) {
  const value = optionalString(params, field);
  if (value === null) return null;
  try {
    new URL(value); // eslint-disable-line no-new
  } catch {
    throw bad(field, 'must be a URL or null');
  }
  return value;
}

module.exports = {
  string,
  optionalString,
  text,
  boolean,
  positiveInt,
  nonNegativeInt,
  oneOf,
  absolutePath,
  optionalAbsolutePath,
  phone,
  jid,
  matching,
  stringList,
  optionalUrl,
};
