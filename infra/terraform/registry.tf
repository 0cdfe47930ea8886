# The flow image (infra/docker/flows.Dockerfile) and the model server images (the packaging flow).
resource "aws_ecr_repository" "this" {
  for_each             = toset(["flows", "model-server"])
  name                 = "${local.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE" # a tag is a git sha or a model version: never moved

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.mlops.arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the newest 50 images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 50 }
      action       = { type = "expire" }
    }]
  })
}
