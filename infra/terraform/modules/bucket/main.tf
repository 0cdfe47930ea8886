# One mlops bucket with the protections every one of them gets: no public access, versioning,
# KMS encryption with the project's key, access logging, TLS only and a lifecycle.
variable "name" {
  description = "Bucket name."
  type        = string
}

variable "purpose" {
  description = "What the bucket holds (a tag)."
  type        = string
}

variable "kms_key_arn" {
  description = "The project's KMS key."
  type        = string
}

variable "access_log_bucket" {
  description = "Bucket receiving this bucket's server access logs."
  type        = string
}

variable "cold_after_days" {
  description = "Move current objects to infrequent access after this many days (null: never)."
  type        = number
  default     = null
}

resource "aws_s3_bucket" "this" {
  #checkov:skip=CKV_AWS_144:cross-region replication is a disaster-recovery choice left to the operator
  #checkov:skip=CKV2_AWS_62:nothing reacts to new objects; flows read them when they run
  bucket = var.name
  tags   = { purpose = var.purpose }
}

resource "aws_s3_bucket_public_access_block" "this" {
  bucket                  = aws_s3_bucket.this.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "this" {
  bucket = aws_s3_bucket.this.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "this" {
  bucket = aws_s3_bucket.this.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_logging" "this" {
  bucket        = aws_s3_bucket.this.id
  target_bucket = var.access_log_bucket
  target_prefix = "${var.name}/"
}

# Old object versions expire: DVC and MLflow address content by hash and never need them back
# after 90 days.
resource "aws_s3_bucket_lifecycle_configuration" "this" {
  bucket = aws_s3_bucket.this.id

  rule {
    id     = "noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  rule {
    id     = "cold-objects"
    status = var.cold_after_days == null ? "Disabled" : "Enabled"
    filter {}
    transition {
      days          = coalesce(var.cold_after_days, 30)
      storage_class = "STANDARD_IA"
    }
  }
}

resource "aws_s3_bucket_policy" "tls_only" {
  bucket = aws_s3_bucket.this.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyInsecureTransport"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.this.arn, "${aws_s3_bucket.this.arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
}

output "bucket" {
  value = aws_s3_bucket.this.bucket
}

output "arn" {
  value = aws_s3_bucket.this.arn
}

output "id" {
  value = aws_s3_bucket.this.id
}
